"""The PyTorch reference denoiser: dit_ref's guided forward, the graph contract run in eager mode."""

import torch

from dit_ref.errors import DiTError
from dit_ref.model import DiT

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_from_name(dtype) -> torch.dtype:
    """torch dtype from "float32" / "float16" / "bfloat16" (or a torch dtype); DiTError otherwise."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise DiTError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")


class TorchDenoiser:
    """DiT.guided_forward under inference_mode: (x, t, y, cfg_scale) -> (eps, var_values), float32 out.

    The model computes in `dtype` with dit_ref's float32 islands (timestep features, LayerNorm
    statistics, softmax, guidance); float16 works on CPU in torch 2.13 but is slow there.
    The model is moved to the device and dtype in place (no copy of a multi-GB model).
    """

    def __init__(self, model: DiT, device=None, dtype="float32", cfg_channels: int = 3,
                 source: str = "", random_weights: bool = False):
        if cfg_channels not in (3, 4):
            raise DiTError(f"cfg_channels must be 3 (official sample.py) or 4 (textbook), not {cfg_channels}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DiTError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
        self.dtype = dtype_from_name(dtype)
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.cfg_channels = cfg_channels
        self.source, self.random_weights = source, random_weights
        self.manifest = None
        self.name = f"torch-{self.device.type} {str(self.dtype).removeprefix('torch.')}"

    @property
    def latent_size(self) -> int:
        return self.model.latent_size

    def __call__(self, x, t, y, cfg_scale):
        with torch.inference_mode():
            eps, var_values = self.model.guided_forward(x, t, y, cfg_scale, self.cfg_channels)  # (B, 4, L, L) each
        return eps, var_values


def load_torch_denoiser(model: str, image_size: int, ckpt=None, random_init=None, device=None,
                        dtype="float32", cfg_channels: int = 3) -> TorchDenoiser:
    """A TorchDenoiser from dit_ref.weights.load_dit (a checkpoint, "auto", "hf:ID", or random init)."""
    from dit_ref.weights import load_dit

    if model is None or image_size is None:
        raise DiTError("the torch backend needs --model (e.g. XL/2) and --image-size (256 or 512)")
    loaded = load_dit(model, int(image_size), ckpt=ckpt, random_init=random_init)
    return TorchDenoiser(loaded.model, device, dtype, cfg_channels, loaded.source, loaded.random_weights)
