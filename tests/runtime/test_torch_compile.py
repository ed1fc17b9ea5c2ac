"""The torch backend's compile option on a CPU: the mode it picks, the CUDA-graph modes refused off a GPU, and a
compiled denoiser (guided forward and cached-steps forms) against eager. tests/gpu/test_torch_cuda.py runs the
CUDA-graph modes."""

import pytest
import torch

from dit_ref.errors import DiTError
from export.guided import example_inputs
from runtime.backends import load_denoiser
from runtime.backends.torch_backend import COMPILE_MODES, TorchDenoiser, compile_mode
from testing_utils import max_rel_error, random_model


@pytest.mark.parametrize("option, mode", [(None, None), (False, None), (True, "default"),
                                          ("reduce-overhead", "reduce-overhead"), ("max-autotune", "max-autotune")])
def test_compile_option_names_a_torch_compile_mode(option, mode):
    assert compile_mode(option) == mode


@pytest.mark.parametrize("option", ["cudagraphs", 1, "Default"])
def test_an_unknown_mode_is_refused_naming_the_modes(option):
    with pytest.raises(DiTError, match="unknown torch.compile mode .*; choose one of default, reduce-overhead"):
        compile_mode(option)
    assert "reduce-overhead" in COMPILE_MODES


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_graph_modes_need_a_cuda_device(mode):
    with pytest.raises(DiTError) as caught:
        load_denoiser(None, "torch", model="S/8", image_size=256, random_init=0, device="cpu", compile=mode)
    assert str(caught.value) == (f"torch.compile mode {mode} replays CUDA graphs and needs --device cuda; on the cpu "
                                 "use the default mode")


@pytest.mark.slow
def test_compiled_on_cpu_matches_eager_with_guided_rows_and_cached_steps(record_property):
    model = random_model("S/8", 256)
    eager, compiled = (TorchDenoiser(model, "cpu", compile=option) for option in (False, True))
    assert (eager.name, compiled.name) == ("torch-cpu float32", "torch.compile float32")
    x, t, y, cfg_scale = example_inputs(model, 3, seed=1)
    cfg_scale[1] = 1.0  # row 1 not guided: U = 2 of B = 3
    errors = [max_rel_error(a, b) for a, b in zip(compiled(x, t, y, cfg_scale), eager(x, t, y, cfg_scale))]
    inputs = {"x": x, "t": t, "y": y, "cfg_scale": cfg_scale, "guided": torch.tensor([0, 2])}
    (refresh, reuse), (eager_refresh, eager_reuse) = compiled.cached_forms(), eager.cached_forms()
    refreshed, expected = refresh(inputs), eager_refresh(inputs)
    errors += [max_rel_error(refreshed[name], expected[name]) for name in expected]
    features = {"features": expected["features"], "null_features": expected["null_features"]}
    errors += [max_rel_error(a, b) for a, b in zip(reuse({**inputs, **features}).values(),
                                                   eager_reuse({**inputs, **features}).values())]
    print(f"torch.compile (default mode, CPU) vs eager, S/8, guided rows and cached steps: {max(errors):.2e}")
    record_property("compile_vs_eager_cpu", max(errors))
    assert len(errors) == 2 + 4 + 2 and max(errors) < 1e-5
