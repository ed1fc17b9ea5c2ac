"""Step-level batching without Ray (runtime.service.stepping, runtime.service.replica_denoiser): images of
different samplers, steps and cfg scales joining a running batch share its denoiser calls, and each still
equals generate()'s per-sample image; a short request overtakes a long one; a full batch makes images
wait; a failed call fails only its images. The shipped fashion model as an FP32 graph, one thread.

Tolerance against generate(seeding="per-sample"): 1 grey level (rows in a batch of another shape may
round a latent's last bit differently; the same bound as the service's).
"""

import asyncio
import io

import numpy as np
import pytest
import torch
from PIL import Image

from runtime.generate import generate, load_with_decoder
from dit_ref.contract import BatchRange
from dit_ref.runners import Runner
from runtime.sampling import sampler_from_name, step
from runtime.sampling.noise import PerSampleNoise
from runtime.service.replica_denoiser import ReplicaDenoiser
from runtime.service.stepping import Item, StepBatcher, StepLoop
from runtime_helpers import Wrapped

GREY_LEVELS = 1


@pytest.fixture(scope="module")
def loaded(fashion_graph):
    denoiser, decoder = load_with_decoder(fashion_graph, "auto", "auto", threads=1)
    yield denoiser, decoder
    denoiser.close()


def items(sampler, steps, labels, seed, cfg_scale=4.0) -> list[Item]:
    return [Item(label, seed, index, sampler, steps, cfg_scale) for index, label in enumerate(labels)]


def pixels(made) -> np.ndarray:
    image = np.asarray(Image.open(io.BytesIO(made.png)))
    return image[..., None] if image.ndim == 2 else image


def worst_difference(loaded, request: list[Item], made: list) -> int:
    """Grey levels between the made images and generate()'s per-sample ones for the same request."""
    denoiser, decoder = loaded
    first = request[0]
    expected = next(generate(denoiser, [item.label for item in request], sampler_from_name(first.sampler, first.steps),
                             seed=first.seed, cfg_scale=first.cfg_scale, decoder=decoder, seeding="per-sample"))
    got = np.stack([pixels(image) for image in made])
    return int(np.abs(got.astype(int) - expected.samples.astype(int)).max())


def test_samplers_of_every_kind_share_calls_and_each_image_equals_generate(loaded):
    """DDPM, DDIM, DPM++ (a multistep diffusers scheduler) and Euler ancestral (a stochastic one, drawing from
    each image's generator) join a running batch at calls 1, 3, 3 and 6, with their own seeds and cfg scales."""
    denoiser = ReplicaDenoiser(loaded[0])
    batcher = StepBatcher(denoiser, loaded[1], max_batch=8, replica="test")
    requests = {1: [items("ddpm", 12, [1, 2], 5)], 3: [items("ddim", 5, [3], 6, 1.5), items("dpm++", 4, [4, 5], 7)],
                6: [items("euler-ancestral", 4, [6], 8, 2.0)]}
    made = {}
    while denoiser.calls == 0 or batcher.running:
        call = denoiser.calls + 1
        joining = [(item, denoiser.calls, (call, key, k)) for key, request in enumerate(requests.get(call, []))
                   for k, item in enumerate(request)]
        for ticket, outcome in batcher.step(joining):
            assert not isinstance(outcome, Exception), outcome
            made[ticket] = outcome
    trajectory_steps = sum(request[0].steps for group in requests.values() for request in group)
    print(f"{denoiser.calls} denoiser calls for {trajectory_steps} steps of 4 requests")
    assert denoiser.calls == 12  # the DDPM image's 12 calls; the others joined them
    for joined, group in requests.items():
        for key, request in enumerate(group):
            images = [made[(joined, key, k)] for k in range(len(request))]
            assert all(image.calls.first == joined for image in images)
            worst = worst_difference(loaded, request, images)
            print(f"{request[0].sampler} {request[0].steps} joined at call {joined}: calls {images[0].calls}, "
                  f"largest batch {images[0].batch_size}, {worst} grey levels from generate()")
            assert worst <= GREY_LEVELS


async def make_request(loop: StepLoop, request: list[Item], delay: float = 0.0) -> list:
    await asyncio.sleep(delay)
    return list(await asyncio.gather(*[loop.make(item) for item in request]))


def test_a_short_request_overtakes_a_long_one_and_a_full_batch_waits(loaded):
    """max_batch 2: a DDPM-60 image runs; a DDIM-4 image joins at the next call and finishes first; a third
    image finds the batch full and joins when the short one is done."""
    denoiser = ReplicaDenoiser(loaded[0])
    loop = StepLoop(StepBatcher(denoiser, loaded[1], max_batch=2, replica="test"))

    async def scenario():
        long = asyncio.create_task(make_request(loop, items("ddpm", 60, [1], 0)))
        while denoiser.calls < 5:
            await asyncio.sleep(0.001)
        short = asyncio.create_task(make_request(loop, items("ddim", 4, [2], 1)))
        third = asyncio.create_task(make_request(loop, items("ddim", 3, [3], 2)))
        [short_image] = await short
        assert not long.done()
        return (await long)[0], short_image, (await third)[0]

    long, short, third = asyncio.run(scenario())
    print(f"long {long.calls}, short {short.calls}, third {third.calls}")
    assert short.calls.first == short.calls.arrived + 1 and short.calls.last == short.calls.first + 3
    assert long.calls.first < short.calls.first and short.calls.last < long.calls.last
    assert third.calls.first == short.calls.last + 1 and max(long.batch_size, short.batch_size) == 2


class FailingOnce(Wrapped):
    """A denoiser whose next call raises."""

    def __init__(self, denoiser):
        super().__init__(denoiser)
        self.fail = True

    def __call__(self, *inputs):
        if self.fail:
            self.fail = False
            raise RuntimeError("the engine fell over")
        return self.inner(*inputs)


def test_a_failed_call_fails_its_images_and_the_next_request_is_made(loaded):
    loop = StepLoop(StepBatcher(ReplicaDenoiser(FailingOnce(loaded[0])), loaded[1], max_batch=4, replica="test"))

    async def scenario():
        with pytest.raises(RuntimeError, match="fell over"):
            await make_request(loop, items("ddim", 3, [1, 2], 0))
        return await make_request(loop, items("ddim", 3, [1, 2], 0))

    made = asyncio.run(scenario())
    assert worst_difference(loaded, items("ddim", 3, [1, 2], 0), made) <= GREY_LEVELS


def test_an_abandoned_request_stops_running(loaded):
    denoiser = ReplicaDenoiser(loaded[0])
    loop = StepLoop(StepBatcher(denoiser, loaded[1], max_batch=4, replica="test"))

    async def scenario():
        abandoned = asyncio.create_task(make_request(loop, items("ddpm", 200, [1], 0)))
        while denoiser.calls < 3:
            await asyncio.sleep(0.001)
        abandoned.cancel()  # as Serve cancels a call whose client went away
        made = await make_request(loop, items("ddim", 2, [2], 0))
        return made[0]

    made = asyncio.run(scenario())
    print(f"after the abandoned request: {made.calls}, {denoiser.calls} calls in all")
    assert made.batch_size == 1 and denoiser.calls < 10


class EngineLike(Runner):
    """A runner with an engine's profile of 3..8 rows that records the rows it was called with."""

    runtime, name, device, batch_range = "test", "engine-like", torch.device("cpu"), BatchRange(3, 4, 8)

    def __init__(self):
        self.rows = []

    def run(self, inputs: dict) -> dict:
        self.rows.append(len(inputs["x"]))
        return {"eps": inputs["x"] * 0, "var_values": inputs["x"] * 0 + 1}


def test_an_engine_pads_a_call_to_its_profiles_minimum(loaded):
    from runtime.backends.graph import GraphDenoiser

    runner = EngineLike()
    graph = loaded[0]
    denoiser = GraphDenoiser(runner, graph.manifest, graph.path, "tensorrt", {}, "engine-like")
    x = torch.zeros(2, *graph.latent_shape)
    eps, var_values = denoiser(x, torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), torch.ones(2))
    assert runner.rows == [3] and eps.shape == var_values.shape == x.shape


def test_the_replica_counts_its_calls_and_a_simulated_one_makes_nothing(loaded):
    sampler = sampler_from_name("ddim", 3)
    noise = PerSampleNoise(0, [0, 1])
    x, y = noise.draw_batch([1, 2], loaded[0].latent_shape, 10)
    for simulated in (None, 1.0):
        denoiser = ReplicaDenoiser(loaded[0], simulated_call_ms=simulated)
        trajectory = sampler.begin(x, y, torch.full((2,), 4.0), noise)
        while not trajectory.done:
            step(denoiser, [trajectory])
        assert denoiser.calls == 3 and denoiser.name == loaded[0].name
        assert (trajectory.x.abs().max() > 0) and (simulated is None or torch.isfinite(trajectory.x).all())


class NaNFor(Wrapped):
    """A denoiser whose eps is NaN for the rows of one label."""

    def __init__(self, denoiser, label: int):
        super().__init__(denoiser)
        self.label = label

    def __call__(self, x, t, y, cfg_scale):
        eps, var_values = self.inner(x, t, y, cfg_scale)
        return torch.where((y == self.label)[:, None, None, None], float("nan"), eps), var_values


def test_nan_in_one_trajectory_fails_its_images_alone(loaded):
    from dit_ref.errors import DiTError

    loop = StepLoop(StepBatcher(ReplicaDenoiser(NaNFor(loaded[0], 9)), loaded[1], max_batch=4, replica="test"))

    async def scenario():
        return await asyncio.gather(make_request(loop, items("ddim", 4, [9], 0)),
                                    make_request(loop, items("ddpm", 6, [1, 2], 1)), return_exceptions=True)

    bad, good = asyncio.run(scenario())
    print(f"the NaN request: {bad}")
    assert isinstance(bad, DiTError) and "NaN or inf at step 1" in str(bad)
    assert worst_difference(loaded, items("ddpm", 6, [1, 2], 1), good) <= GREY_LEVELS
