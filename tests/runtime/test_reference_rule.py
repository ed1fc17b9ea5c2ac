"""The reference rule (runtime.tuning.reference): which setting a point is compared with, per sampler kind."""

import pytest

from runtime.sampling import sampler_from_name
from runtime.tuning.reference import CONVERGED, CONVERGED_CHEAPER, Reference, reference_for


@pytest.mark.parametrize("sampler, steps", [("ddim", 50), ("ddpm", 250), ("dpm++", 20), ("euler-ancestral", 20)])
def test_a_change_that_keeps_the_trajectory_is_compared_with_its_plain_self(sampler, steps):
    # another precision, a cache policy, a guidance interval: same sampler and steps, FP32 uncached
    assert reference_for(sampler_from_name(sampler, steps), plain=False) == Reference("trajectory", sampler, steps)


@pytest.mark.parametrize("sampler, steps", [("ddim", 25), ("ddim", 50), ("dpm++", 20), ("unipc", 10), ("deis", 20),
                                            ("euler", 30), ("heun", 15)])
def test_a_plain_deterministic_sampler_is_compared_with_the_converged_ode_solution(sampler, steps):
    assert reference_for(sampler_from_name(sampler, steps), plain=True) == Reference("converged", *CONVERGED)


@pytest.mark.parametrize("sampler, steps", [("ddpm", 250), ("ddpm", 50), ("euler-ancestral", 20)])
def test_a_plain_stochastic_sampler_has_no_paired_reference(sampler, steps):
    assert reference_for(sampler_from_name(sampler, steps), plain=True) is None


def test_the_converged_solution_is_its_own_reference_and_deterministic():
    converged = sampler_from_name(*CONVERGED)
    assert not converged.stochastic
    assert reference_for(converged, plain=True) is None
    assert reference_for(converged, plain=False) == Reference("trajectory", *CONVERGED)


def test_a_cheaper_converged_solution_can_be_asked_for():
    ddim = sampler_from_name("ddim", 50)
    assert reference_for(ddim, plain=True, converged=CONVERGED_CHEAPER) == Reference("converged", *CONVERGED_CHEAPER)
    assert reference_for(sampler_from_name(*CONVERGED_CHEAPER), plain=True, converged=CONVERGED_CHEAPER) is None
    assert not sampler_from_name(*CONVERGED_CHEAPER).stochastic
