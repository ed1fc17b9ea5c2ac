"""The DiT model with the official numerics (facebookresearch/DiT models.py).

The model computes in the dtype of its weights. Where float16 (or bfloat16) is unsafe, it computes in
float32 whatever the weights are (the "float32 islands"): the sinusoidal timestep features, the
residual stream between blocks (x + gate * branch), LayerNorm statistics, the attention softmax, and
the guidance arithmetic. For a float32 model every island is a no-op, so one definition serves the
reference, the FP32 graph and the FP16 and BF16 graphs.

The residual stream is an island because rounding each block's sum to 8 mantissa bits was half of
bfloat16's error, and a float16 residual stream is where large transformers overflow (the measurement:
docs/export.md, the FP16 graph).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from dit_ref import configs
from dit_ref.configs import DiTConfig
from dit_ref.errors import DiTError

NUMERICS = ("official", "diffusers")
LAYER_NORM_EPS = 1e-6
DIFFUSERS_MLP_NORM_EPS = 1e-5  # diffusers' DiTTransformer2DModel norm_eps default, used by norm2


def modulate(x, shift, scale):
    """adaLN modulation; x (N, T, D), shift and scale (N, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def layer_norm(x, eps, dtype=None):
    """LayerNorm without affine parameters, statistics in float32 (FP16 sums of squares overflow); the
    result in dtype (default x's)."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps).to(dtype or x.dtype)


def timestep_features(t, frequency_shift=0, dim=configs.FREQUENCY_EMBEDDING_SIZE, max_period=10000):
    """Sinusoidal features [cos, sin] of the integer timestep, always in float32; t (N,) -> (N, dim).

    Official: freqs = exp(-ln(max_period) * k / half). diffusers divides by (half - 1) instead
    (its downscale_freq_shift=1).
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / (half - frequency_shift))  # (half,)
    args = t[:, None].float() * freqs[None]  # (N, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, dim)


def sincos_pos_embed(hidden_size, grid_size):
    """The fixed 2-D sin-cos position table (1, T, D), computed in float64 as the official code does.

    The first D/2 dims encode the column index, the last D/2 the row index; each half is [sin, cos].
    """

    def encode(positions, dim):  # (M,) -> (M, dim)
        omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
        angles = positions.reshape(-1)[:, None] * omega[None]  # (M, dim/2)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # token i*grid + j is at row i, col j
    table = torch.cat([encode(cols, hidden_size // 2), encode(rows, hidden_size // 2)], dim=1)
    return table.float().unsqueeze(0)  # (1, T, D)


class PatchEmbed(nn.Module):
    """Conv patchify, tokens in row-major order."""

    def __init__(self, patch_size, in_channels, hidden_size):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):  # x (N, C, L, L)
        x = self.proj(x)  # (N, D, L/p, L/p)
        return x.flatten(2).transpose(1, 2)  # (N, T, D)


class TimestepEmbedder(nn.Module):
    """Integer timesteps -> (N, D) vectors: sinusoidal features, then an MLP."""

    def __init__(self, hidden_size, frequency_shift=0):
        super().__init__()
        self.frequency_shift = frequency_shift
        self.mlp = nn.Sequential(
            nn.Linear(configs.FREQUENCY_EMBEDDING_SIZE, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t):  # t (N,) int64
        features = timestep_features(t, self.frequency_shift)  # (N, 256) float32
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # (N, D)


class LabelEmbedder(nn.Module):
    """Class labels -> (N, D); the last row (num_classes) is the null class for guidance.

    No label dropout here: training drops labels by passing the null class (dit_ref.training).
    """

    def __init__(self, num_classes, hidden_size):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y):  # y (N,) int64
        return self.embedding_table(y)  # (N, D)


class Attention(nn.Module):
    """Multi-head self-attention with one qkv projection (timm's layout), softmax in float32."""

    def __init__(self, hidden_size, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):  # x (N, T, D)
        n, tokens, width = x.shape
        qkv = self.qkv(x).reshape(n, tokens, 3, self.num_heads, self.head_dim)  # (N, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, H, T, Dh)
        scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (N, H, T, T)
        weights = scores.float().softmax(dim=-1).to(v.dtype)  # (N, H, T, T)
        out = (weights @ v).transpose(1, 2).reshape(n, tokens, width)  # (N, T, D)
        return self.proj(out)  # (N, T, D)


class Mlp(nn.Module):
    """Linear(D, 4D), tanh-GELU, Linear(4D, D)."""

    def __init__(self, hidden_size):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, configs.MLP_RATIO * hidden_size)
        self.fc2 = nn.Linear(configs.MLP_RATIO * hidden_size, hidden_size)

    def forward(self, x):  # x (N, T, D)
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # (N, T, D)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning."""

    def __init__(self, hidden_size, num_heads, mlp_norm_eps=LAYER_NORM_EPS):
        super().__init__()
        self.mlp_norm_eps = mlp_norm_eps
        self.attn = Attention(hidden_size, num_heads)
        self.mlp = Mlp(hidden_size)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x, c):  # x (N, T, D) the float32 residual stream, c (N, D) in the weights' dtype
        return self.forward_branches(x, c)[0]  # (N, T, D) float32

    def forward_branches(self, x, c):
        """The block and its two branch outputs: (x (N, T, D) float32, attention (N, T, D), MLP (N, T, D)), the
        branches before their gates (what a cached step reuses, dit_ref.block_features)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c).chunk(6, dim=1)  # each (N, D)
        )
        h = modulate(layer_norm(x, LAYER_NORM_EPS, c.dtype), shift_msa, scale_msa)  # (N, T, D)
        attention = self.attn(h)  # (N, T, D)
        x = x + (gate_msa.unsqueeze(1) * attention).float()  # (N, T, D) float32
        h = modulate(layer_norm(x, self.mlp_norm_eps, c.dtype), shift_mlp, scale_mlp)  # (N, T, D)
        mlp = self.mlp(h)  # (N, T, D)
        return x + (gate_mlp.unsqueeze(1) * mlp).float(), attention, mlp

    def forward_reusing(self, x, c, attention, mlp):
        """The block with its branch outputs given (an earlier step's, or a forecast): only the modulation,
        the gates and the residual sums are computed. x (N, T, D) float32, attention and mlp (N, T, D)."""
        _, _, gate_msa, _, _, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)  # each (N, D)
        x = x + (gate_msa.unsqueeze(1) * attention.to(c.dtype)).float()  # (N, T, D) float32
        return x + (gate_mlp.unsqueeze(1) * mlp.to(c.dtype)).float()


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear map to p*p*C_out values per token."""

    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)

    def forward(self, x, c):  # x (N, T, D) float32, c (N, D)
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # each (N, D)
        x = modulate(layer_norm(x, LAYER_NORM_EPS, c.dtype), shift, scale)  # (N, T, D)
        return self.linear(x)  # (N, T, p*p*C_out)


class DiT(nn.Module):
    """Diffusion Transformer over C-channel latents (or pixels); 2C outputs with learned sigma, else C."""

    def __init__(self, config: DiTConfig, image_size: int, numerics: str = "official"):
        super().__init__()
        if numerics not in NUMERICS:
            raise DiTError(f"unknown numerics {numerics!r}; choose one of {', '.join(NUMERICS)}")
        self.config = config
        self.image_size = image_size
        self.numerics = numerics
        self.latent_size = config.latent_size(image_size)
        self.grid_size = self.latent_size // config.patch_size
        diffusers = numerics == "diffusers"
        d = config.hidden_size
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, d)
        self.t_embedder = TimestepEmbedder(d, frequency_shift=1 if diffusers else 0)
        self.y_embedder = LabelEmbedder(config.num_classes, d)
        # A buffer in the state dict, as the official checkpoint stores it; its loaded value is used.
        self.pos_embed = nn.Parameter(sincos_pos_embed(d, self.grid_size), requires_grad=False)
        mlp_norm_eps = DIFFUSERS_MLP_NORM_EPS if diffusers else LAYER_NORM_EPS
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.num_heads, mlp_norm_eps) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(d, config.patch_size, config.out_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    def unpatchify(self, x):  # x (N, T, p*p*C) -> (N, C, L, L)
        n, p, c, grid = x.shape[0], self.config.patch_size, self.config.out_channels, self.grid_size
        x = x.reshape(n, grid, grid, p, p, c)  # (N, h, w, p, q, C)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (N, C, h, p, w, q)
        return x.reshape(n, c, grid * p, grid * p)  # (N, C, L, L)

    def forward(self, x, t, y):
        """Plain forward: x (N, C, L, L) float32, t (N,) int64, y (N,) int64 -> (N, C_out, L, L) float32."""
        h = (self.x_embedder(x.to(self.dtype)) + self.pos_embed.to(self.dtype)).float()  # (N, T, D) float32
        c = self.t_embedder(t) + self.y_embedder(y)  # (N, D)
        for block in self.blocks:
            h = block(h, c)  # (N, T, D)
        h = self.final_layer(h, c)  # (N, T, p*p*C_out)
        return self.unpatchify(h).float()  # (N, C_out, L, L)

    def forward_with_cfg(self, x, t, y, cfg_scale, cfg_channels=3):
        """The official sample.py guided forward on a doubled batch (conditional half first).

        x (2N, C, L, L) whose first half is used for both halves, t (2N,), y (2N,) with the null
        class in the second half, cfg_scale a float or (N,) -> (2N, C_out, L, L). The first
        cfg_channels channels of both halves are the guided eps; the other channels stay each half's
        own output. cfg_channels=3 reproduces the official sample.py; 4 is the textbook form.
        """
        half = x[: len(x) // 2]  # (N, C, L, L)
        out = self.forward(torch.cat([half, half], dim=0), t, y)  # (2N, C_out, L, L)
        scale = torch.as_tensor(cfg_scale, dtype=torch.float32, device=x.device)
        cond, uncond = out.unflatten(0, (2, -1)).unbind(0)  # each (N, C_out, L, L)
        guided = guide(cond, uncond, scale, cfg_channels, self.config.latent_channels)[:, :cfg_channels]
        guided = torch.cat([guided, guided], dim=0)  # (2N, cfg_channels, L, L)
        return torch.cat([guided, out[:, cfg_channels:]], dim=1)  # (2N, C_out, L, L)

    def guided_forward(self, x, t, y, cfg_scale, cfg_channels=3, guided=None):
        """The graph contract: x (B, C, L, L), t (B,), y (B,), cfg_scale (B,), guided (U,) -> (eps[, var_values]).

        guided holds the indices of the rows to guide (0 <= U <= B; None: every row). The transformer
        runs once over B + U rows: the conditional pass of every row, then the null-class pass of the
        guided ones; the first cfg_channels eps channels of a guided row are uncond + s (cond - uncond),
        an unguided row gets its conditional output. The result is split into eps (B, C, L, L) and, for a
        learned-sigma model, var_values (B, C, L, L), all float32. With every row guided this is the
        doubled batch of sample.py, row for row.
        """
        guided = torch.arange(x.shape[0], device=x.device) if guided is None else guided  # (U,)
        out = self.forward(*self.guided_batch(x, t, y, guided))  # (B + U, C_out, L, L)
        return self.split_guided(out, x.shape[0], guided, cfg_scale, cfg_channels)

    def guided_batch(self, x, t, y, guided):
        """The B + U rows of a guided pass: every row, then the guided rows with the null class."""
        null = torch.full_like(guided, self.config.null_class)  # (U,)
        return torch.cat([x, x[guided]], dim=0), torch.cat([t, t[guided]], dim=0), torch.cat([y, null], dim=0)

    def split_guided(self, out, batch: int, guided, cfg_scale, cfg_channels):
        """(eps[, var_values]) from the B + U rows' output: guidance on the guided rows, float32."""
        cond = out[:batch]  # (B, C_out, L, L)
        uncond = out[unconditional_rows(guided, batch)]  # (B, C_out, L, L); an unguided row's is its cond row
        guided_out = guide(cond, uncond, cfg_scale.float(), cfg_channels, self.config.latent_channels)
        return guided_out.split(self.config.latent_channels, dim=1)  # (eps, var_values) or (eps,)


def unconditional_rows(guided, batch):
    """For each of the batch's rows, where its unconditional output is in the B + U pass: B + k for the k-th
    guided row, the row itself (its conditional output) for an unguided one. guided (U,) -> (B,) int64.

    A (B, U) match table summed over U, not a scatter: U may be 0 (nothing guided), which every runtime
    sums to zeros.
    """
    rows = torch.arange(batch, device=guided.device)  # (B,)
    match = (guided.unsqueeze(0) == rows.unsqueeze(1)).to(torch.int64)  # (B, U)
    offsets = batch + torch.arange(guided.shape[0], device=guided.device).unsqueeze(0) - rows.unsqueeze(1)  # (B, U)
    return rows + (match * offsets).sum(dim=1)  # (B,)


def guide(cond, uncond, cfg_scale, cfg_channels, latent_channels=configs.LATENT_CHANNELS):
    """Classifier-free guidance on the first cfg_channels channels, in float32.

    cond, uncond (B, C_out, L, L); cfg_scale a scalar or (B,) -> (B, C_out, L, L): channels <
    cfg_channels are uncond + s (cond - uncond) (cond itself where uncond is cond), the rest the
    conditional output. Only eps channels (< latent_channels) may be guided.
    """
    configs.check_cfg_channels(cfg_channels, latent_channels)
    cond, uncond = cond.float(), uncond.float()
    scale = cfg_scale.reshape(-1, 1, 1, 1) if cfg_scale.ndim else cfg_scale
    guided_eps = uncond[:, :cfg_channels] + scale * (cond[:, :cfg_channels] - uncond[:, :cfg_channels])
    return torch.cat([guided_eps, cond[:, cfg_channels:]], dim=1)  # (B, C_out, L, L)


def build_model(name: str, image_size: int, numerics: str = "official") -> DiT:
    """An untrained DiT of a named config ("XL/2") at an image size."""
    return DiT(configs.get_config(name), image_size, numerics)


def randomize_weights_(model: DiT, seed: int, std: float = 0.02) -> DiT:
    """Fill every tensor with seeded random values, so no output is trivially zero.

    The official init zeroes adaLN and the final layer, which makes outputs exactly zero and parity
    tests vacuous. pos_embed keeps its sin-cos table (the released checkpoints carry that table).
    Weights are N(0, 1/fan_in), so activations keep unit scale through the depth; biases N(0, 5 std).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name == "pos_embed":
                continue
            fan_in = tensor[0].numel() if tensor.ndim > 1 else 1
            scale = 1.0 / math.sqrt(fan_in) if tensor.ndim > 1 else std * 5
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            tensor.copy_(noise * scale)
    return model
