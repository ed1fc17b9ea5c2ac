"""What every denoiser is: a callable (x, t, y, cfg_scale) -> (eps, var_values) and its facts, declared here.

Backends (runtime/backends/) subclass Denoiser, and the wrappers (cached steps, a service replica, a benchmark's
timer) WrappedDenoiser; the sampling loop, generate(), the CLI, the service and the benchmarks use only what is
declared on it (tests/test_layout.py: nothing is set on a denoiser or probed from outside). var_values is None
for models without learned sigma. A row whose cfg scale is 1 is not guided (guidance at scale 1 is the
conditional output; dit_ref.contract.guided_rows): the denoiser decides the guided rows from each call's cfg
scales, so a cfg-1 sample, or a step outside a guidance interval (the sampler then passes scale 1), runs the
transformer once, not twice. The cfg scales come on the CPU (a trajectory keeps them there), so deciding the
guided rows never waits for the GPU.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from dit_ref.contract import GUIDED, INPUT_NAMES, BatchRange, Manifest, guided_rows
from dit_ref.errors import DiTError

NO_PAIR = ("this graph was exported without its cached-steps graphs; re-export it with dit-export --cached-steps "
           "to use --cache")


@dataclass(frozen=True)
class Provenance:
    """What a denoiser computes and where its weights came from (printed, and written into outputs)."""

    model: str  # config name, "DiT-XL/2" or "fashion"
    image_size: int
    latent_channels: int
    latent_size: int
    num_classes: int
    learn_sigma: bool
    decoder: str  # "vae" or "pixels"
    cfg_channels: int
    source: str  # the checkpoint's path, URL, hub id, "shipped:fashion" or "random init (seed N)"
    random_weights: bool  # True: outputs are noise, not images

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "Provenance":
        return cls(manifest.model, manifest.image_size, manifest.latent_channels, manifest.latent_size,
                   manifest.num_classes, manifest.learn_sigma, manifest.decoder, manifest.cfg_channels,
                   manifest.checkpoint.source, manifest.random_weights)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, L, L) of x."""
        return (self.latent_channels, self.latent_size, self.latent_size)


class Denoiser:
    """Base of the backends and wrappers: its facts, __call__, call_trajectories (one call for the trajectories of a
    step), cached_forms (cached steps), close / context manager."""

    name: str  # "onnxruntime-cpu fp16", "tensorrt fp16", "torch-cuda float16", ...
    device: torch.device  # where inputs are expected and outputs returned
    provenance: Provenance
    batch_range: BatchRange  # image batch sizes one call takes
    manifest: Manifest | None = None  # of the graph or engine; None for the PyTorch reference
    path: Path | None = None  # the graph or engine file it runs; None for the PyTorch reference
    backend: str = ""  # its name in runtime.backends.BACKENDS
    load_options: dict = {}  # the backend options it was loaded with (device, threads, dtype, ...)
    transformer_rows: int = 0  # rows the transformer ran, B + U per call (what guiding fewer rows saves)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.provenance.latent_shape

    @property
    def latent_size(self) -> int:
        return self.provenance.latent_size

    def __call__(self, x, t, y, cfg_scale):
        """x (B, C, L, L) float32, t, y (B,) int64, cfg_scale (B,) float32 -> (eps, var_values or None)."""
        outputs = self.run_named(self.graph_inputs(x, t, y, cfg_scale))
        return outputs["eps"], outputs.get("var_values")

    def call_trajectories(self, trajectories) -> list[tuple]:
        """One call for the next step of every trajectory (runtime.sampling.Trajectory), each at its own timestep:
        their inputs stacked, the outputs split back, (eps, var_values) per trajectory."""
        parts = [trajectory.model_inputs() for trajectory in trajectories]
        inputs = parts[0] if len(parts) == 1 else [torch.cat(column) for column in zip(*parts)]
        eps, var_values = self(*inputs)  # (N, C, L, L) each, N rows of all trajectories
        sizes = [len(trajectory) for trajectory in trajectories]
        var_parts = var_values.split(sizes) if var_values is not None else [None] * len(sizes)
        return list(zip(eps.split(sizes), var_parts))

    def cached_forms(self):
        """(refresh, reuse) of cached steps, callables over named tensors (runtime.caching): the backend's, owned by
        this denoiser and closed with it; DiTError for a denoiser without them."""
        raise DiTError(NO_PAIR)

    def run_named(self, inputs: dict) -> dict:
        """The graph on named inputs (the manifest's input_names) -> its named outputs; graph backends."""
        raise NotImplementedError

    def guided_rows(self, cfg_scale: torch.Tensor) -> torch.Tensor:
        """(U,) int64 indices of the rows to guide: those whose cfg scale is not 1; counts B + U rows."""
        guided = guided_rows(cfg_scale)  # (U,) on cfg_scale's device
        self.transformer_rows += len(cfg_scale) + len(guided)
        return guided

    def graph_inputs(self, x, t, y, cfg_scale) -> dict:
        """The graph's inputs by name: the per-image ones and, for a graph that takes it, `guided`. A graph of
        an older manifest format guides every row (it has no `guided`)."""
        inputs = dict(zip(INPUT_NAMES, (x, t, y, cfg_scale)))
        if self.manifest is not None and self.manifest.guided_rows:
            inputs[GUIDED] = self.guided_rows(cfg_scale)
        else:
            self.transformer_rows += 2 * len(x)
        return inputs

    def runs(self, path, backend: str, options: dict) -> bool:
        """Whether this denoiser runs the file at path with this backend and these of its options."""
        if self.path is None:
            return False
        return (Path(self.path).resolve() == Path(path).resolve() and self.backend == backend
                and all(self.load_options.get(key) == value for key, value in options.items()))

    def close(self) -> None:
        """Free what the backend holds (sessions, engines, GPU memory). Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


class WrappedDenoiser(Denoiser):
    """A denoiser around another (cached steps, a service replica, a benchmark's timer): the inner one's facts, its
    calls and cached forms passed through unless the wrapper changes them, closed with it."""

    def __init__(self, inner: Denoiser):
        self.inner = inner
        self.name, self.device, self.provenance, self.batch_range = (inner.name, inner.device, inner.provenance,
                                                                     inner.batch_range)
        self.manifest, self.path, self.backend, self.load_options = (inner.manifest, inner.path, inner.backend,
                                                                     inner.load_options)

    def __call__(self, x, t, y, cfg_scale):
        return self.inner(x, t, y, cfg_scale)

    def cached_forms(self):
        return self.inner.cached_forms()

    def close(self) -> None:
        self.inner.close()
