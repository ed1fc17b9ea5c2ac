"""The twelve DiT configurations, image sizes, and their parameter and flop counts.

Facts from Peebles & Xie, "Scalable Diffusion Models with Transformers" (Table 1) and
facebookresearch/DiT models.py.
"""

from dataclasses import dataclass

from dit_ref.errors import DiTError

IMAGE_SIZES = (256, 512)
VAE_DOWNSAMPLE = 8  # the SD VAE maps 256 px to a 32 x 32 latent
LATENT_CHANNELS = 4
NUM_CLASSES = 1000
NULL_CLASS = 1000  # the extra embedding row used for classifier-free guidance
FREQUENCY_EMBEDDING_SIZE = 256  # sinusoidal timestep features fed to the timestep MLP
MLP_RATIO = 4
NUM_TIMESTEPS = 1000

# family -> (depth, hidden size, heads)
FAMILIES = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
PATCH_SIZES = (2, 4, 8)


@dataclass(frozen=True)
class DiTConfig:
    """One named DiT architecture (image size is chosen separately)."""

    family: str  # "S", "B", "L" or "XL"
    depth: int  # number of transformer blocks
    hidden_size: int  # token width D
    num_heads: int  # attention heads; head size is D / heads (72 for XL)
    patch_size: int  # p: each token covers p x p latent pixels

    @property
    def name(self) -> str:
        return f"DiT-{self.family}/{self.patch_size}"

    @property
    def short_name(self) -> str:
        return f"{self.family}/{self.patch_size}"

    @property
    def file_stem(self) -> str:
        """Name safe for file names: "DiT-XL-2"."""
        return f"DiT-{self.family}-{self.patch_size}"

    @property
    def in_channels(self) -> int:
        return LATENT_CHANNELS

    @property
    def out_channels(self) -> int:
        return 2 * LATENT_CHANNELS  # learned sigma: eps and variance values

    def num_tokens(self, image_size: int) -> int:
        grid = latent_size(image_size) // self.patch_size
        return grid * grid


CONFIGS = {
    f"DiT-{family}/{patch}": DiTConfig(family, *FAMILIES[family], patch)
    for family in FAMILIES
    for patch in PATCH_SIZES
}


def get_config(name: str) -> DiTConfig:
    """Look up "DiT-XL/2" or its short form "XL/2" (also "DiT-XL-2")."""
    key = name.strip()
    if not key.startswith("DiT-"):
        key = "DiT-" + key
    family, _, patch = key[len("DiT-"):].replace("-", "/").partition("/")
    key = f"DiT-{family.upper()}/{patch}"
    if key not in CONFIGS:
        valid = ", ".join(config.short_name for config in CONFIGS.values())
        raise DiTError(f"unknown model {name!r}; choose one of {valid}")
    return CONFIGS[key]


def latent_size(image_size: int) -> int:
    """Side of the latent for an image size: 256 -> 32, 512 -> 64."""
    check_image_size(image_size)
    return image_size // VAE_DOWNSAMPLE


def check_image_size(image_size: int) -> None:
    if image_size not in IMAGE_SIZES:
        raise DiTError(
            f"image size {image_size} is not supported; DiT checkpoints exist for "
            f"{' and '.join(map(str, IMAGE_SIZES))}"
        )


def param_count(config: DiTConfig, image_size: int) -> int:
    """Number of parameters, the fixed pos_embed table included (as the paper counts)."""
    d, p, out = config.hidden_size, config.patch_size, config.out_channels
    patch_embed = config.in_channels * p * p * d + d
    pos_embed = config.num_tokens(image_size) * d
    timestep = FREQUENCY_EMBEDDING_SIZE * d + d + d * d + d
    label = (NUM_CLASSES + 1) * d
    block = (3 * d * d + 3 * d) + (d * d + d)  # attention qkv and proj
    block += (MLP_RATIO * d * d + MLP_RATIO * d) + (MLP_RATIO * d * d + d)  # mlp fc1, fc2
    block += 6 * d * d + 6 * d  # adaLN modulation
    final = (2 * d * d + 2 * d) + (d * p * p * out + p * p * out)
    return patch_embed + pos_embed + timestep + label + config.depth * block + final


def gflops(config: DiTConfig, image_size: int) -> float:
    """Forward multiply-accumulates of one sample, in billions, as the paper's Table 1 counts.

    Counts every matmul and convolution (linears, patch conv, attention q.k and attn.v);
    elementwise ops, norms and softmax are not counted. Within 0.1% of the paper's figures,
    which were rounded and measured with a tracing counter.
    """
    d, p, tokens = config.hidden_size, config.patch_size, config.num_tokens(image_size)
    macs = tokens * d * config.in_channels * p * p  # patch embedding conv
    macs += FREQUENCY_EMBEDDING_SIZE * d + d * d  # timestep MLP
    per_block = 6 * d * d  # adaLN modulation, once per sample
    per_block += tokens * (3 * d * d + d * d + 2 * MLP_RATIO * d * d)  # qkv, proj, mlp
    per_block += 2 * tokens * tokens * d  # q.k^T and attn.v over all heads
    macs += config.depth * per_block
    macs += 2 * d * d + tokens * d * p * p * config.out_channels  # final layer
    return macs / 1e9
