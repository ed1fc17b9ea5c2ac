"""The PyTorch reference denoiser: dit_ref's guided forward, the graph contract run in eager mode, or
compiled with torch.compile in one of its modes; "reduce-overhead" (and "max-autotune") replay CUDA
graphs, one per input shape, which is what a PyTorch user gets on a GPU."""

import torch

from dit_ref.contract import BatchRange
from dit_ref.errors import DiTError
from dit_ref.model import DiT
from runtime.denoiser import Denoiser, Provenance

NEEDS_MODEL = ("the torch backend needs --model (e.g. XL/2, or fashion) and, for the paper's models, "
               "--image-size (256 or 512)")
TORCH_BATCH = BatchRange(1, 32, 32)  # one call's images; dit-run's default batch is the max
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes that capture and replay CUDA graphs


def dtype_from_name(dtype) -> torch.dtype:
    """torch dtype from "float32" / "float16" / "bfloat16" (or a torch dtype); DiTError otherwise."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise DiTError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")


def compile_mode(compile) -> str | None:
    """torch.compile's mode for the compile option: False or None -> None (eager), True -> "default", or a mode
    of COMPILE_MODES; DiTError otherwise."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return "default"
    if isinstance(compile, str) and compile in COMPILE_MODES:
        return compile
    raise DiTError(f"unknown torch.compile mode {compile!r}; choose one of {', '.join(COMPILE_MODES)} (or True: "
                   "default)")


class TorchDenoiser(Denoiser):
    """DiT.guided_forward under inference_mode: (x, t, y, cfg_scale) -> (eps, var_values), float32 out.

    The model computes in `dtype` with dit_ref's float32 islands (timestep features, LayerNorm
    statistics, softmax, guidance); float16 works on CPU in torch 2.13 but is slow there.
    The model is moved to the device and dtype in place (no copy of a multi-GB model).
    compile (True or a mode of COMPILE_MODES) runs the same guided forward, and the cached-steps forms,
    through torch.compile; its CUDA-graph modes need a CUDA device.
    """

    backend = "torch"  # its name in runtime.backends.BACKENDS

    def __init__(self, model: DiT, device=None, dtype="float32", cfg_channels: int | None = None,
                 source: str = "", random_weights: bool = False, compile: bool = False):
        cfg_channels = model.config.default_cfg_channels if cfg_channels is None else cfg_channels
        model.config.check_cfg_channels(cfg_channels)
        self.device = torch.device(device) if device is not None else default_device()
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DiTError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
        self.dtype = dtype_from_name(dtype)
        if self.dtype == torch.bfloat16 and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise DiTError(f"--dtype bfloat16 needs an Ampere or newer GPU (compute capability 8.0+), and "
                           f"{torch.cuda.get_device_name(self.device)} is older; use --dtype float16")
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.cfg_channels = cfg_channels
        self.source, self.random_weights = source, random_weights
        config = model.config
        self.provenance = Provenance(config.name, model.image_size, config.latent_channels, model.latent_size,
                                     config.num_classes, config.learn_sigma, config.decoder, cfg_channels,
                                     source, random_weights)
        self.batch_range = TORCH_BATCH
        self.compile_mode = compile_mode(compile)
        if self.compile_mode in CUDA_GRAPH_MODES and self.device.type != "cuda":
            raise DiTError(f"torch.compile mode {self.compile_mode} replays CUDA graphs and needs --device cuda; on "
                           f"the {self.device.type} use the default mode")
        self.forward = self._compiled(self._guided)
        kind = {None: f"torch-{self.device.type}", "default": "torch.compile"}.get(
            self.compile_mode, f"torch.compile {self.compile_mode}")
        self.name = f"{kind} {str(self.dtype).removeprefix('torch.')}"

    def _compiled(self, function):
        """function through torch.compile in this denoiser's mode (itself when eager). Under CUDA graphs each
        call begins a new step and its outputs are copied out: the next replay overwrites the graph's own."""
        if self.compile_mode is None:
            return function
        compiled = torch.compile(function, mode=self.compile_mode)
        if self.compile_mode not in CUDA_GRAPH_MODES:
            return compiled

        def replay(*inputs):
            torch.compiler.cudagraph_mark_step_begin()
            return tuple(output.clone() for output in compiled(*inputs))

        return replay

    def _guided(self, x, t, y, cfg_scale, guided):
        return self.model.guided_forward(x, t, y, cfg_scale, self.cfg_channels, guided)

    def cached_forms(self):
        """(refresh, reuse) of cached steps on this model (dit_ref.block_features): named tensors in and out."""
        from dit_ref import block_features

        outputs = ("eps", "var_values") if self.model.config.learn_sigma else ("eps",)
        guided_refresh = self._compiled(block_features.guided_refresh)
        guided_reuse = self._compiled(block_features.guided_reuse)

        def refresh(inputs):
            with torch.inference_mode():
                *results, features = guided_refresh(self.model, *self._row_inputs(inputs),
                                                    inputs["guided"].to(self.device))
            self.transformer_rows += len(features)
            rows = len(inputs["x"])
            return {**dict(zip(outputs, results)), "features": features[:rows], "null_features": features[rows:]}

        def reuse(inputs):
            features = torch.cat([inputs["features"], inputs["null_features"]])
            with torch.inference_mode():
                results = guided_reuse(self.model, *self._row_inputs(inputs), inputs["guided"].to(self.device),
                                       features)
            return dict(zip(outputs, results))

        return refresh, reuse

    def _row_inputs(self, inputs):
        x, t, y, cfg_scale = (inputs[name].to(self.device) for name in ("x", "t", "y", "cfg_scale"))
        return x, t, y, cfg_scale, self.cfg_channels

    def __call__(self, x, t, y, cfg_scale):
        with torch.inference_mode():
            guided = self.guided_rows(cfg_scale).to(self.device)  # (U,): the rows whose cfg scale is not 1
            outputs = self.forward(x, t, y, cfg_scale.to(self.device), guided)  # (eps, var_values) or (eps,)
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)


def default_device() -> torch.device:
    """cuda when torch sees a GPU, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(path, manifest, expected, device=None, threads=None, dtype="float32", ckpt=None, random_init=None,
         compile=False, num_classes=None) -> TorchDenoiser:
    """A TorchDenoiser from dit_ref.weights.load_dit (a checkpoint, "auto", "hf:ID", or random init)."""
    from dit_ref.weights import load_dit

    if threads is not None:
        torch.set_num_threads(threads)
    if expected.model is None:
        raise DiTError(NEEDS_MODEL)
    loaded = load_dit(expected.model, expected.image_size, ckpt=ckpt, random_init=random_init, num_classes=num_classes)
    return TorchDenoiser(loaded.model, device, dtype, expected.cfg_channels, loaded.source, loaded.random_weights,
                         compile)
