"""Calibrated cache schedules: which calls of a sampler refresh, chosen from the model's own feature changes.

    changes = feature_changes(denoiser, sampler, labels=[0, 1, 2, 3], seed=7)   # (calls, gap + 1)
    calls = schedule_for(changes, refreshes=20)                                 # (0, 1, 2, 4, ...)
    policy = CachePolicy("refresh", calls=calls)                                # --cache refresh:0,1,2,4,...

A reuse at call k hands the blocks' features of the last refresh r to the cheap graph, so what it costs is how
far the features have moved from r to k. On a few calibration trajectories, every call runs the refresh form
(the full forward, which also gives every block's attention and MLP outputs) and records, for each call k and
each gap g up to max_gap, the relative change ||F_k - F_(k-g)||_1 / ||F_k||_1 (the features of the
conditional and the guided rows' null-class pass, averaged over samples). A schedule then reuses while the
change since the last refresh stays under a threshold and refreshes when it does not (SmoothCache's rule:
Liu et al., "SmoothCache: A Universal Inference Acceleration Technique for Diffusion Transformers", 2024);
the threshold is chosen so that the schedule refreshes a given number of calls, so that it can be compared
with FORA at equal cost. The list is static, per sampler and step count, and runs unchanged on graphs and
engines (runtime.caching's "refresh" policy).
"""

import numpy as np
import torch

from dit_ref.contract import guided_rows
from runtime.options import OPTIONS
from runtime.sampling import CallOptions
from runtime.sampling.noise import PerSampleNoise

MAX_GAP = 8  # the longest run of reuses a schedule allows (and the gaps measured)


def relative_change(newer: torch.Tensor, older: torch.Tensor) -> float:
    """Mean over rows of ||newer - older||_1 / ||newer||_1, each row (n, ...) flattened."""
    newer, older = newer.flatten(1).double(), older.flatten(1).double()
    return float(((newer - older).abs().sum(1) / newer.abs().sum(1).clamp(min=1e-30)).mean())


def feature_changes(denoiser, sampler, labels: list[int], seed: int, cfg_scale: float = OPTIONS["cfg_scale"].default,
                    options: CallOptions = CallOptions(), max_gap: int = MAX_GAP) -> np.ndarray:
    """(calls, max_gap + 1) float64: [k, g] the relative change of the features from call k - g to call k on
    trajectories of the labels (per-sample seeds (seed, i)); NaN where k < g, 0 at g = 0. The denoiser runs its
    refresh form (denoiser.cached_forms()) at every call."""
    refresh, _ = denoiser.cached_forms()
    provenance = denoiser.provenance
    noise = PerSampleNoise(seed, range(len(labels)), denoiser.device)
    changes = np.full((sampler.num_calls, max_gap + 1), np.nan)
    recent = []  # the last max_gap calls' features, newest last
    with torch.inference_mode():
        x, y = noise.draw_batch(labels, provenance.latent_shape, provenance.num_classes)
        scale = torch.full((len(labels),), float(cfg_scale))  # (n,), on the CPU as a trajectory keeps it
        trajectory = sampler.begin(x, y, scale, noise, backend=denoiser.name, options=options)
        while not trajectory.done:
            x, t, y, call_scale = trajectory.model_inputs()
            outputs = refresh({"x": x, "t": t, "y": y, "cfg_scale": call_scale, "guided": guided_rows(call_scale)})
            features = outputs["features"] if not len(outputs["null_features"]) else torch.cat(
                [outputs["features"], outputs["null_features"]], dim=1)  # a sample's rows side by side
            changes[trajectory.k, 0] = 0.0
            for gap, older in enumerate(reversed(recent), start=1):
                if older.shape == features.shape:  # the guided rows changed: not comparable (a refresh anyway)
                    changes[trajectory.k, gap] = relative_change(features, older)
            recent = (recent + [features])[-max_gap:]
            trajectory.advance(outputs["eps"], outputs.get("var_values"))
    return changes


def refresh_calls(changes: np.ndarray, threshold: float, forced=()) -> tuple[int, ...]:
    """The calls a schedule refreshes: call 0, the forced ones, and every call whose features moved more than
    threshold since the last refresh (or whose gap to it is past the measured ones)."""
    calls, last = [0], 0
    for k in range(1, len(changes)):
        gap = k - last
        moved = changes[k, gap] if gap < changes.shape[1] else np.inf
        if k in forced or not moved <= threshold:  # NaN (not measured) refreshes too
            calls.append(k)
            last = k
    return tuple(calls)


def schedule_for(changes: np.ndarray, refreshes: int, forced=()) -> tuple[int, ...]:
    """The schedule with at most `refreshes` refreshes (the most that fit; at least call 0 and the forced ones)
    and the lowest threshold that gives it: the threshold is searched among the measured changes."""
    candidates = np.unique(changes[np.isfinite(changes)])
    best = refresh_calls(changes, np.inf, forced)  # the fewest refreshes any threshold gives
    low, high = 0, len(candidates) - 1
    while low <= high:  # the count falls as the threshold rises: the smallest threshold within the budget
        middle = (low + high) // 2
        calls = refresh_calls(changes, candidates[middle], forced)
        if len(calls) <= refreshes:
            best, high = calls, middle - 1
        else:
            low = middle + 1
    return best


def interval_edges(timesteps, interval: tuple[int, int] | None) -> set[int]:
    """The calls whose guided rows differ from the previous call's (a guidance interval's edges): the cache
    refreshes there whatever the schedule says."""
    if interval is None:
        return set()
    inside = [interval[0] <= t <= interval[1] for t in timesteps]
    return {k for k in range(1, len(inside)) if inside[k] != inside[k - 1]}
