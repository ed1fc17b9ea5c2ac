"""A Generator replica's denoiser: every call padded to the graph's minimum batch and counted, or, for the
benchmarks only, a stand-in whose call costs the same for any batch.

    denoiser = ReplicaDenoiser(load_denoiser(path))         # pads and counts; denoiser.calls: calls started
    denoiser = ReplicaDenoiser(real, simulated_call_ms=10)   # SIMULATION: sleeps 10 ms a call, eps 0

The counter is what a request's answer reports per image (the replica's calls it took part in), so
that sharing a denoiser call is something a client can count. The stand-in models how a GPU behaves
up to its batch (one image costs what eight cost) on a machine that has none: its images are
nothing (eps 0 with the fixed variance), only its timing means anything, and dit-serve labels it.
"""

import time

import torch


class ReplicaDenoiser:
    """Wraps a Denoiser (its name, device, provenance and batch range pass through)."""

    def __init__(self, denoiser, simulated_call_ms: float | None = None):
        self.inner = denoiser
        self.simulated_s = None if simulated_call_ms is None else simulated_call_ms / 1000
        self.calls = 0  # denoiser calls started on this replica (read by the event loop, written by one thread)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def stateful(self) -> bool:
        return getattr(self.inner, "stateful", False)

    def call_trajectories(self, trajectories) -> list:
        """A caching denoiser's step (runtime.caching), counted; its calls are not padded (graphs of batch
        minimum 1, the default)."""
        self.calls += 1
        return self.inner.call_trajectories(trajectories)

    def __call__(self, x, t, y, cfg_scale):
        """(x, t, y, cfg_scale) with n rows -> (eps, var_values) with n rows; the call is padded with copies of
        row 0 up to the graph's minimum batch."""
        self.calls += 1
        n = len(x)
        if self.simulated_s is not None:
            time.sleep(self.simulated_s)
            return torch.zeros_like(x), None  # the fixed-large variance: finite latents, no image
        pad = self.inner.batch_range.min - n
        if pad > 0:
            x, t, y, cfg_scale = (torch.cat([column, column[:1].expand(pad, *column.shape[1:])])
                                  for column in (x, t, y, cfg_scale))
        eps, var_values = self.inner(x, t, y, cfg_scale)  # (n + pad, C, L, L)
        return eps[:n], None if var_values is None else var_values[:n]
