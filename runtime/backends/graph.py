"""The denoiser of a graph or engine file: a runner (dit_ref.runners) and the facts of the file it runs.

Every file backend (ONNX Runtime, OpenVINO, TensorRT) makes one; each backend module adds only its own options and
refusals. It declares what it is (the file, the registry's backend name, the options it was loaded with), so the
cached-steps pair its manifest names loads alike.
"""

from pathlib import Path

import torch

from dit_ref.contract import BatchRange, Manifest
from dit_ref.errors import DiTError
from dit_ref.runners import Runner
from runtime.caching import NO_PAIR
from runtime.denoiser import Denoiser, Provenance


def check_inputs(x, t, y, cfg_scale, latent_shape: tuple[int, int, int], batch_range: BatchRange | None) -> int:
    """The batch size B of a call; DiTError unless shapes are (B, C, L, L), (B,), (B,), (B,), B within batch_range
    (an engine's profile; None: a graph, any B)."""
    batch = x.shape[0] if x.dim() == 4 else -1
    if tuple(x.shape) != (batch, *latent_shape) or any(tuple(v.shape) != (batch,) for v in (t, y, cfg_scale)):
        raise DiTError(f"expected x (B, {', '.join(map(str, latent_shape))}) and t, y, cfg_scale (B,); got "
                       f"{tuple(x.shape)}, {tuple(t.shape)}, {tuple(y.shape)}, {tuple(cfg_scale.shape)}")
    if batch_range is None:
        return batch
    return batch_range.check(batch, "the engine's", "rebuild it with dit-export build --batch MIN:OPT:MAX")


def given(**options) -> dict:
    """The options given (not None or False), as the registry passes them: what a denoiser was loaded with."""
    return {key: value for key, value in options.items() if value is not None and value is not False}


class GraphDenoiser(Denoiser):
    """(x, t, y, cfg_scale) -> (eps, var_values or None) by a runner on the file at `path`, on the runner's device."""

    def __init__(self, runner: Runner, manifest: Manifest, path, backend: str, load_options: dict, name: str):
        self.runner, self.manifest, self.path = runner, manifest, Path(path)
        self.backend = backend  # its name in runtime.backends.BACKENDS
        self.load_options = dict(load_options)  # the backend options it was loaded with (device, threads, ...)
        self.device, self.name = runner.device, name
        self.provenance = Provenance.from_manifest(manifest)
        self.batch_range = runner.batch_range or manifest.batch  # an engine's own profile, else the manifest's
        self._pair = None  # the cached-steps refresh and reuse denoisers, once loaded

    def __call__(self, x, t, y, cfg_scale):
        engine = self.runner.batch_range  # an engine's profile; None: a graph takes any batch
        if engine is not None and len(x) < engine.min:  # fewer rows than the profile takes: padded with row 0
            rows, pad = len(x), engine.min - len(x)
            eps, var_values = self(*(torch.cat([column, column[:1].expand(pad, *column.shape[1:])])
                                     for column in (x, t, y, cfg_scale)))
            return eps[:rows], None if var_values is None else var_values[:rows]
        if engine is not None:
            check_inputs(x, t, y, cfg_scale, self.latent_shape, engine)
        return super().__call__(x, t, y, cfg_scale)

    def run_named(self, inputs: dict) -> dict:
        return self.runner.run(inputs)

    def cached_forms(self):
        """(refresh, reuse) of cached steps: the graphs the manifest names (dit-export --cached-steps), loaded once
        by the same backend with the same options, named tensors in and out."""
        if self._pair is None:
            from runtime.backends import load_denoiser

            pair = self.manifest.cached_steps
            if not pair:
                raise DiTError(NO_PAIR)
            self._pair = tuple(load_denoiser(self.path.parent / pair[role], self.backend, **self.load_options)
                               for role in ("refresh", "reuse"))
        return tuple(denoiser.run_named for denoiser in self._pair)

    def close(self) -> None:
        for denoiser in self._pair or ():
            denoiser.close()
        self._pair = None
        self.runner.close()
