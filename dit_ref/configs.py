"""The DiT configurations (the paper's twelve and the small shipped model), image sizes, and their
parameter and flop counts.

Facts from Peebles & Xie, "Scalable Diffusion Models with Transformers" (Table 1) and
facebookresearch/DiT models.py. A config is the whole shape of a DiT: besides depth and width it
carries the latent channels, the class count, whether sigma is learned and the image sizes, so a
checkpoint trained with other values (train.py --num-classes 10, a 16-channel VAE, a pixel-space
model) is one dataclasses.replace away.
"""

from dataclasses import dataclass, replace

from dit_ref.errors import DiTError

VAE_DOWNSAMPLE = 8  # the SD VAE maps 256 px to a 32 x 32 latent
LATENT_CHANNELS = 4  # the paper's models: SD VAE latents
NUM_CLASSES = 1000  # the paper's models: ImageNet
NULL_CLASS = 1000  # the paper's models' extra embedding row used for classifier-free guidance
IMAGE_SIZES = (256, 512)  # the paper's models
FREQUENCY_EMBEDDING_SIZE = 256  # sinusoidal timestep features fed to the timestep MLP
MLP_RATIO = 4
NUM_TIMESTEPS = 1000
OFFICIAL_CFG_CHANNELS = 3  # sample.py guides 3 of the 4 SD-VAE latent channels ("for exact reproducibility")

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
    """One DiT architecture; the image size is chosen separately, among image_sizes."""

    family: str  # "S", "B", "L" or "XL" for the paper's configs
    depth: int  # number of transformer blocks
    hidden_size: int  # token width D
    num_heads: int  # attention heads; head size is D / heads (72 for XL)
    patch_size: int  # p: each token covers p x p latent pixels
    latent_channels: int = LATENT_CHANNELS  # C of the input x (4 for the SD VAE, 1 for grayscale pixels)
    num_classes: int = NUM_CLASSES  # labels 0..num_classes-1; num_classes itself is the null class
    learn_sigma: bool = True  # outputs variance values beside eps (out channels 2C), as the paper's models
    image_sizes: tuple[int, ...] = IMAGE_SIZES  # the image sizes this config is used at
    pixel_space: bool = False  # True: the model denoises pixels (no VAE; latent = image)
    title: str | None = None  # a model's own name ("fashion"); None: "DiT-{family}/{patch}"

    @property
    def name(self) -> str:
        return self.title or f"DiT-{self.family}/{self.patch_size}"

    @property
    def short_name(self) -> str:
        """"XL/2" for "DiT-XL/2"; other names as they are."""
        return self.name.removeprefix("DiT-")

    @property
    def file_stem(self) -> str:
        """Name safe for file names: "DiT-XL-2"."""
        return self.name.replace("/", "-")

    @property
    def in_channels(self) -> int:
        return self.latent_channels

    @property
    def out_channels(self) -> int:
        return 2 * self.latent_channels if self.learn_sigma else self.latent_channels

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def decoder(self) -> str:
        """How samples become images: "vae" (latents, decoded by a VAE) or "pixels" (already images)."""
        return "pixels" if self.pixel_space else "vae"

    @property
    def default_cfg_channels(self) -> int:
        """Guided eps channels: 3 for 4-channel latents (the official quirk), else all of them."""
        return OFFICIAL_CFG_CHANNELS if self.latent_channels == LATENT_CHANNELS else self.latent_channels

    def latent_size(self, image_size: int) -> int:
        """Side of the model's input for an image size: 256 -> 32 through the VAE, 28 -> 28 in pixels."""
        self.check_image_size(image_size)
        return image_size if self.pixel_space else image_size // VAE_DOWNSAMPLE

    def check_image_size(self, image_size: int) -> None:
        if image_size not in self.image_sizes:
            raise DiTError(
                f"image size {image_size} is not supported; {self.short_name} checkpoints exist for "
                f"{' and '.join(map(str, self.image_sizes))}"
            )

    def num_tokens(self, image_size: int) -> int:
        grid = self.latent_size(image_size) // self.patch_size
        return grid * grid

    def check_cfg_channels(self, cfg_channels: int) -> int:
        return check_cfg_channels(cfg_channels, self.latent_channels)

    def check_label(self, label: int) -> int:
        if not 0 <= label < self.num_classes:
            raise DiTError(f"class {label} is out of range: {self.short_name} has classes 0..{self.num_classes - 1} "
                           f"({self.num_classes} is the null class used for guidance)")
        return label


CONFIGS = {
    f"DiT-{family}/{patch}": DiTConfig(family, *FAMILIES[family], patch)
    for family in FAMILIES
    for patch in PATCH_SIZES
}
# Trained here and shipped in the package (dit_ref/shipped/): a small class-conditional pixel-space
# DiT on Fashion-MNIST (28 x 28 grayscale, 10 classes); 7 x 7 tokens of 4 x 4 pixels.
SHIPPED = {
    "fashion": DiTConfig("fashion", depth=6, hidden_size=128, num_heads=4, patch_size=4, latent_channels=1,
                         num_classes=10, image_sizes=(28,), pixel_space=True, title="fashion"),
}


def all_configs() -> list[DiTConfig]:
    """The paper's twelve, then the shipped models."""
    return [*CONFIGS.values(), *SHIPPED.values()]


def get_config(name: str) -> DiTConfig:
    """Look up "DiT-XL/2" or its short form "XL/2" (also "DiT-XL-2"), or a shipped model ("fashion")."""
    if name.strip().lower() in SHIPPED:
        return SHIPPED[name.strip().lower()]
    key = name.strip()
    if not key.startswith("DiT-"):
        key = "DiT-" + key
    family, _, patch = key[len("DiT-"):].replace("-", "/").partition("/")
    key = f"DiT-{family.upper()}/{patch}"
    if key not in CONFIGS:
        paper = ", ".join(config.short_name for config in CONFIGS.values())
        if "/" in name:  # a family/patch name: the paper's configs are what was meant
            raise DiTError(f"unknown model {name!r}; choose one of {paper}")
        raise DiTError(f"unknown model {name!r}; choose one of {', '.join(SHIPPED)}, {paper}")
    return CONFIGS[key]


def with_shape(config: DiTConfig, **shape) -> DiTConfig:
    """config with other latent channels, class count or learned sigma (a checkpoint's own)."""
    return replace(config, **shape) if shape else config


def check_cfg_channels(cfg_channels: int, latent_channels: int) -> int:
    """cfg_channels as an int; DiTError unless 1 <= cfg_channels <= latent_channels (only eps is guided)."""
    if not isinstance(cfg_channels, bool) and isinstance(cfg_channels, int) and 1 <= cfg_channels <= latent_channels:
        return cfg_channels
    if latent_channels == LATENT_CHANNELS:
        raise DiTError(f"cfg_channels must be 3 (official sample.py) or 4 (textbook), not {cfg_channels}")
    raise DiTError(f"cfg_channels must be 1..{latent_channels} (the model's latent channels), not {cfg_channels}")


def latent_size(image_size: int, config: DiTConfig = CONFIGS["DiT-XL/2"]) -> int:
    """Side of the latent for an image size: 256 -> 32, 512 -> 64 (the paper's models by default)."""
    return config.latent_size(image_size)


def check_image_size(image_size: int, config: DiTConfig = CONFIGS["DiT-XL/2"]) -> None:
    config.check_image_size(image_size)


def param_count(config: DiTConfig, image_size: int) -> int:
    """Number of parameters, the fixed pos_embed table included (as the paper counts)."""
    d, p, out = config.hidden_size, config.patch_size, config.out_channels
    patch_embed = config.in_channels * p * p * d + d
    pos_embed = config.num_tokens(image_size) * d
    timestep = FREQUENCY_EMBEDDING_SIZE * d + d + d * d + d
    label = (config.num_classes + 1) * d
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
