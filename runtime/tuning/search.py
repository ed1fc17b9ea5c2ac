"""The search: the fastest setting within a fidelity budget, without measuring the full product of the levers.

Each lever (an engine, a sampler and its steps, a guidance interval, a cache policy) is measured alone from the
exact point with a few pairs, as the mean squared error of its pictures against exact's. Independent errors add
(the mean squared error of a sum of independent perturbations is the sum of theirs), so a combination's error is
predicted by the sum of its levers', and its speed by the cost model (runtime.tuning.costs). Combinations are
then measured in order of predicted speed, among those predicted to pass, until one passes: a few pairs to
screen, more to confirm (successive halving: most candidates never get the confirming count).
"""

import math
from dataclasses import dataclass
from typing import Callable, Iterable


def psnr_from_mse(mse: float, peak: float) -> float:
    """10 log10(peak^2 / mse) in dB (inf for mse 0)."""
    return math.inf if mse <= 0 else 10 * math.log10(peak * peak / mse)


def mse_from_psnr(psnr: float, peak: float) -> float:
    return 0.0 if math.isinf(psnr) else peak * peak / 10 ** (psnr / 10)


def predicted_psnr(lever_mses: Iterable[float], peak: float) -> float:
    """A combination's PSNR against exact, from its levers' own mean squared errors (they add)."""
    return psnr_from_mse(sum(lever_mses), peak)


@dataclass(frozen=True)
class Candidate:
    """A combination, with its predictions."""

    key: str
    seconds: float  # predicted seconds per image
    psnr: float  # predicted PSNR against exact's pictures, dB
    setting: object = None  # what to measure (runtime.tuning.space.Setting)


@dataclass(frozen=True)
class Verdict:
    """A measurement's outcome: whether it passed, and its measured speed (None when it was not timed)."""

    passed: bool
    seconds: float | None = None


def walk(candidates: Iterable[Candidate], budget: float, check: Callable[[Candidate], Verdict], margin: float = 3.0,
         time_left: Callable[[], bool] = lambda: True, ties: float = 0.1, most: int = 3) -> tuple[Candidate | None, list]:
    """(the fastest candidate whose measurement passes, [(candidate, verdict), ...] in the order measured).

    Candidates predicted within `margin` dB of the budget or above it are measured fastest first; after the first
    that passes, those predicted within `ties` (a fraction) of its predicted seconds are measured too (until `most`
    have passed) and the measured fastest of the passing ones wins. Stops when time_left() says so.
    """
    hopeful = sorted((c for c in candidates if c.psnr >= budget - margin), key=lambda c: (c.seconds, -c.psnr))
    measured, winners = [], []
    for candidate in hopeful:
        if winners and (candidate.seconds > winners[0][0].seconds * (1 + ties) or len(winners) >= most):
            break
        if not time_left():
            break
        verdict = check(candidate)
        measured.append((candidate, verdict))
        if verdict.passed:
            winners.append((candidate, verdict))
    if not winners:
        return None, measured
    best = min(winners, key=lambda pair: pair[1].seconds if pair[1].seconds is not None else pair[0].seconds)
    return best[0], measured


def pareto_front(costs, qualities, higher_is_better: bool = True) -> list[bool]:
    """Per point: True when no other point is at least as cheap and at least as good, and better in one."""
    sign = 1.0 if higher_is_better else -1.0
    points = [(float(cost), sign * float(quality)) for cost, quality in zip(costs, qualities, strict=True)]

    def dominates(a, b) -> bool:
        return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])

    return [not any(dominates(other, point) for other in points) for point in points]
