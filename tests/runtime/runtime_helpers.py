"""Test helpers for the runtime tests: graph copies with edited manifests, scripted denoisers."""

import json
import os
from pathlib import Path

import torch

from runtime.denoiser import WrappedDenoiser


def graph_copy(graph: Path, directory: Path, **manifest_changes) -> Path:
    """A symlink to graph in directory with its own (edited) manifest beside it."""
    link = directory / graph.name
    os.symlink(graph, link)
    manifest = json.loads(graph.with_suffix(".json").read_text())
    manifest.update(manifest_changes)
    link.with_suffix(".json").write_text(json.dumps(manifest))
    return link


class Wrapped(WrappedDenoiser):
    """A test's denoiser around another: the inner one's facts, its own __call__; closing it leaves the inner one
    (a shared fixture) open."""

    def close(self) -> None:
        pass


class ScriptedDenoiser(Wrapped):
    """Wraps a denoiser; at call number `at` (0-based) returns NaN eps, or raises `raise_at_call`."""

    def __init__(self, inner, at: int, value=float("nan"), exception=None):
        super().__init__(inner)
        self.at, self.value, self.exception, self.calls = at, value, exception, 0
        self.name = f"scripted {inner.name}"

    def __call__(self, x, t, y, cfg_scale):
        eps, var_values = self.inner(x, t, y, cfg_scale)
        self.calls += 1
        if self.calls - 1 == self.at:
            if self.exception is not None:
                raise self.exception
            eps = torch.full_like(eps, self.value)
        return eps, var_values


def leftovers(directory: Path) -> list[str]:
    """Names in directory (temporary .partial files included)."""
    return sorted(path.name for path in Path(directory).iterdir())
