"""Seeded randomness: official (one stream, sample.py's order) or per-sample (one stream per sample).

sample.py calls torch.manual_seed(seed), draws z = randn(n, 4, L, L), doubles the batch for
guidance, and p_sample draws randn_like(x) on the doubled batch (2n, 4, L, L) after every model
call, the last step included. sample_ddp.py draws z, then the labels randint(0, 1000, (n,)), per
batch, from the same global generator. A dedicated torch.Generator seeded with S on the sampling
device yields the same numbers as the global one after torch.manual_seed(S) on that device, so
drawing the same shapes in the same order gives sample.py's latents. (sample_ddp.py with
--cfg-scale 1.0 skips guidance and draws un-doubled step noise; dit-run always guides, as sample.py.)

Per-sample seeding gives sample i its own generator keyed by (seed, i), so its picture is the same
whatever batch, worker or machine draws it (sample_ddp.py's seed * world_size + rank is not).
Both give draw_batch(planned labels) -> (x, y) in their own order, and step noise as noise(x).
"""

import torch


def merge_labels(planned: list, drawn: torch.Tensor | None) -> torch.Tensor:
    """The planned labels (None: random) with the random ones taken from drawn (n,) int64."""
    if drawn is None:
        return torch.tensor(planned, dtype=torch.int64)
    given = torch.tensor([-1 if label is None else label for label in planned], device=drawn.device)
    return torch.where(given >= 0, given, drawn)


class OfficialNoise:
    """One generator on the sampling device; every draw has the official shape and order."""

    def __init__(self, seed: int, device="cpu"):
        self.device = torch.device(device)
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def initial(self, n: int, latent_shape: tuple[int, int, int]) -> torch.Tensor:
        """Initial latents z ~ N(0, I), (n, C, L, L) float32."""
        return torch.randn((n, *latent_shape), generator=self.generator, device=self.device)

    def labels(self, n: int, num_classes: int) -> torch.Tensor:
        """Random class labels as sample_ddp.py draws them, (n,) int64."""
        return torch.randint(0, num_classes, (n,), generator=self.generator, device=self.device)

    def draw_batch(self, planned: list, latent_shape, num_classes: int):
        """(x, y) of a batch: z first, then random labels for the whole batch if any is None (sample_ddp.py)."""
        x = self.initial(len(planned), latent_shape)  # (n, C, L, L)
        drawn = None if None not in planned else self.labels(len(planned), num_classes)
        return x, merge_labels(planned, drawn).to(self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Step noise like x (n, ...): drawn for the doubled batch (2n, ...), first n rows used."""
        doubled = torch.randn((2 * x.shape[0], *x.shape[1:]), generator=self.generator, device=self.device)
        return doubled[: x.shape[0]]  # (n, C, L, L)


def sample_seed(seed: int, index: int) -> int:
    """The 63-bit seed of sample `index` of a run seeded with `seed` (numpy's SeedSequence mixing)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class PerSampleNoise:
    """One generator per sample, keyed by (seed, sample index): a sample's label, initial latents and
    step noise do not depend on the batch it is in, the batch size, the order or the machine count.

    Each sample's generator first draws a label (used when none was given, so given and drawn labels
    leave the latents alike), then its initial latents, then one noise tensor per step.
    """

    def __init__(self, seed, indices, device="cpu"):
        """seed: the run's, or one per index (a service's batch holds samples of several requests)."""
        self.device = torch.device(device)
        seeds = [seed] * len(indices) if isinstance(seed, int) else list(seed)
        self.generator = [torch.Generator(self.device).manual_seed(sample_seed(int(s), int(i)))
                          for s, i in zip(seeds, indices, strict=True)]

    def labels(self, n: int, num_classes: int) -> torch.Tensor:
        """Each sample's random label, (n,) int64 (drawn whether or not the caller uses it)."""
        return torch.cat([torch.randint(0, num_classes, (1,), generator=g, device=self.device)
                          for g in self.generator[:n]])

    def initial(self, n: int, latent_shape: tuple[int, int, int]) -> torch.Tensor:
        """Initial latents, (n, C, L, L) float32."""
        return torch.stack([torch.randn(latent_shape, generator=g, device=self.device) for g in self.generator[:n]])

    def draw_batch(self, planned: list, latent_shape, num_classes: int):
        """(x, y) of these samples: each generator draws its label, then its initial latents."""
        drawn = self.labels(len(planned), num_classes)  # (n,)
        return self.initial(len(planned), latent_shape), merge_labels(planned, drawn)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Step noise like x (n, C, L, L), row k from sample k's generator."""
        return torch.stack([torch.randn(x.shape[1:], generator=g, device=self.device) for g in self.generator])
