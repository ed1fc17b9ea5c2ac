"""What a setting costs on this machine, predicted from what its calls cost: a call's time depends on what it
computes (the plain guided forward, a cached-steps refresh or reuse) and on how many of its rows are guided (U
of B), not on the sampler, so a few timed calls per engine predict every setting's seconds per image.

    costs = measure_costs(denoiser, batch=16)            # ms per call by kind, U = B and U = 0
    predict_seconds(costs, timesteps, interval, policy)  # s/image of a trajectory at these timesteps
"""

import statistics
import time
from dataclasses import dataclass

import torch

from runtime.caching import refreshed_calls


@dataclass(frozen=True)
class CallCosts:
    """ms of one call at batch B by kind: {kind: (every row guided, none guided)}; kinds plain, refresh, reuse."""

    batch: int
    ms: dict

    def of(self, kind: str, guided: bool) -> float:
        return self.ms[kind][0 if guided else 1]


def median_ms(call, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def repeats_for(call, seconds: float = 1.5, most: int = 15, least: int = 3) -> int:
    """How many timed calls fit in about `seconds` (one untimed call measures it, and warms up): at least `least`,
    one for a call that takes half of `seconds` or more (a large model on a CPU)."""
    start = time.perf_counter()
    call()
    took = max(time.perf_counter() - start, 1e-6)
    return 1 if took >= seconds / 2 else max(least, min(most, int(seconds / took)))


def measure_costs(denoiser, batch: int, cached: bool) -> CallCosts:
    """The denoiser's calls timed at `batch` images, every row guided and none; with its cached-steps forms too
    (cached: the pair exists)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *denoiser.latent_shape, generator=generator).to(denoiser.device)
    t = torch.full((batch,), 500, device=denoiser.device)
    y = (torch.arange(batch) % denoiser.provenance.num_classes).to(denoiser.device)
    scales = {True: torch.full((batch,), 4.0, device=denoiser.device), False: torch.ones(batch, device=denoiser.device)}
    ms = {}
    with torch.inference_mode():
        ms["plain"] = tuple(timed(lambda: denoiser(x, t, y, scales[guided])) for guided in (True, False))
        if cached:
            refresh, reuse = denoiser.cached_forms()
            for kind in ("refresh", "reuse"):
                ms[kind] = tuple(timed_form(refresh, reuse, kind, x, t, y, scales[guided]) for guided in (True, False))
    return CallCosts(batch, ms)


def timed(call) -> float:
    return median_ms(call, repeats_for(call), warmup=0)  # repeats_for's call warmed it up


def timed_form(refresh, reuse, kind: str, x, t, y, cfg_scale) -> float:
    """ms of one refresh or reuse call (the reuse fed the refresh's own features)."""
    from dit_ref.contract import guided_rows

    inputs = {"x": x, "t": t, "y": y, "cfg_scale": cfg_scale, "guided": guided_rows(cfg_scale)}
    if kind == "refresh":
        return timed(lambda: refresh(inputs))
    features = refresh(inputs)
    fed = {**inputs, "features": features["features"], "null_features": features["null_features"]}
    return timed(lambda: reuse(fed))


def predict_seconds(costs: CallCosts, timesteps, interval=None, policy=None) -> float:
    """Seconds per image of a trajectory at these timesteps (a guidance interval, a cache policy or neither)."""
    refreshed = refreshed_calls(policy, timesteps, interval)
    total = 0.0
    for t, refreshes in zip(timesteps, refreshed):
        guided = interval is None or interval[0] <= t <= interval[1]
        kind = "plain" if policy is None else ("refresh" if refreshes else "reuse")
        total += costs.of(kind, guided)
    return total / 1000 / costs.batch
