"""A Generator replica's denoiser: every call counted, or, for the benchmarks only, a stand-in whose call costs the
same for any batch.

    denoiser = ReplicaDenoiser(load_denoiser(path))         # counts; denoiser.calls: calls started
    denoiser = ReplicaDenoiser(real, simulated_call_ms=10)   # SIMULATION: sleeps 10 ms a call, eps 0

The counter is what a request's answer reports per image (the replica's calls it took part in), so
that sharing a denoiser call is something a client can count. The stand-in models how a GPU behaves
up to its batch (one image costs what eight cost) on a machine that has none: its images are
nothing (eps 0 with the fixed variance), only its timing means anything, and dit-serve labels it.
"""

import time

import torch

from runtime.denoiser import Denoiser, WrappedDenoiser


class ReplicaDenoiser(WrappedDenoiser):
    """Wraps a Denoiser: the same facts, every call counted (or, for a benchmark, simulated)."""

    def __init__(self, denoiser: Denoiser, simulated_call_ms: float | None = None):
        super().__init__(denoiser)
        self.simulated_s = None if simulated_call_ms is None else simulated_call_ms / 1000
        self.calls = 0  # denoiser calls started on this replica (read by the event loop, written by one thread)

    def call_trajectories(self, trajectories) -> list[tuple]:
        """One counted call for the trajectories' next step (a SIMULATION: eps 0 with the fixed variance after
        simulated_call_ms, whatever the batch)."""
        self.calls += 1
        if self.simulated_s is not None:
            time.sleep(self.simulated_s)
            return [(torch.zeros_like(trajectory.x), None) for trajectory in trajectories]
        return self.inner.call_trajectories(trajectories)

    def __call__(self, x, t, y, cfg_scale):
        self.calls += 1
        return self.inner(x, t, y, cfg_scale)

