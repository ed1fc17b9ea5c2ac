"""Cache policies for cached steps: which denoiser calls refresh every block's features, which reuse them.

    --cache fora:N          refresh every N calls, reuse the last refreshed features in between (FORA,
                            Selvaraju et al., "FORA: Fast-Forward Caching in Diffusion Transformer
                            Acceleration", 2024)
    --cache forecast:N:O    refresh every N calls, forecast the features in between from the last O + 1
                            refreshes by divided differences of order O = 1 or 2 (TaylorSeer: Liu et al.,
                            "From Reusing to Forecasting: Accelerating Diffusion Models with TaylorSeers", 2025)

The first and last EDGE_CALLS calls of a trajectory always refresh (the coarse structure is laid down
first, the details last), and so does a call whose guided rows differ from the cached ones (a
guidance interval's edge). fora:1 refreshes every call: the plain guided forward. The policy is
pure (refreshes(k, total)); CachingDenoiser keeps each trajectory's features in its cache_state, so a
sample's cache travels with it in any batch (dit_ref.block_features is what a refresh and a reuse compute). A
forecast's divided differences are brought up to date once per refresh (Newton), so a reuse costs one
multiply-add of the features per order, not the whole table again.
"""

import re
from dataclasses import dataclass

import torch

from dit_ref.contract import GUIDED, guided_rows
from dit_ref.errors import DiTError
from runtime.denoiser import NO_PAIR, Denoiser, WrappedDenoiser  # noqa: F401 (NO_PAIR: part of this module's API)

EDGE_CALLS = 2  # always refreshed at both ends of a trajectory
SPELLING = ("fora:N (reuse for N-1 calls), forecast:N:ORDER (ORDER 1 or 2), N >= 1, e.g. fora:3, or refresh:K,K,... "
            "(the calls that refresh, from 0, rising; dit-tune calibrates them)")


@dataclass(frozen=True)
class CachePolicy:
    kind: str  # "fora", "forecast" or "refresh" (a calibrated list of calls)
    every: int = 0  # fora, forecast: N, a refresh every N calls between the edges
    order: int = 0  # forecast: the divided differences' order (1 or 2); else 0 (the last features as they are)
    calls: tuple[int, ...] = ()  # refresh: the calls that refresh, rising from 0 (runtime.tuning.schedule)

    @property
    def spec(self) -> str:
        if self.kind == "refresh":
            return "refresh:" + ",".join(map(str, self.calls))
        return f"fora:{self.every}" if self.kind == "fora" else f"forecast:{self.every}:{self.order}"

    @property
    def kept(self) -> int:
        """Feature-sized tensors kept per trajectory and part: one difference per order, and the features."""
        return self.order + 1

    def refreshes(self, k: int, total: int) -> bool:
        """Whether call k of total refreshes: a calibrated list's calls; else the edges, then every N-th call after
        the first edge."""
        if self.kind == "refresh":
            return k in self.calls
        return k < EDGE_CALLS or k >= total - EDGE_CALLS or (k - EDGE_CALLS) % self.every == 0

    def check_fits(self, total: int, what: str = "--cache") -> None:
        """DiTError for a calibrated list with calls past a sampler's `total`."""
        if self.calls and self.calls[-1] >= total:
            raise DiTError(f"{what} {self.spec}: call {self.calls[-1]} is past this sampler's {total} calls (0.."
                           f"{total - 1}); calibrate a list for this sampler and step count (dit-tune)")


def parse_cache(spec, what: str = "--cache") -> CachePolicy | None:
    """"fora:3" / "forecast:3:2" / a CachePolicy / None -> CachePolicy or None; DiTError for another spelling."""
    if spec is None or isinstance(spec, CachePolicy):
        return spec
    listed = re.fullmatch(r"\s*refresh:(\d+(?:,\d+)*)\s*", str(spec))
    if listed:
        calls = tuple(int(call) for call in listed.group(1).split(","))
        if calls[0] != 0 or any(b <= a for a, b in zip(calls, calls[1:])):
            raise DiTError(f"{what} {spec!r}: a refresh list starts at call 0 and rises; use {SPELLING}")
        return CachePolicy("refresh", calls=calls)
    found = re.fullmatch(r"\s*(fora):(\d+)\s*|\s*(forecast):(\d+):(\d+)\s*", str(spec))
    if not found:
        raise DiTError(f"{what} {spec!r}: use {SPELLING}")
    if found.group(1):
        policy = CachePolicy("fora", int(found.group(2)))
    else:
        policy = CachePolicy("forecast", int(found.group(4)), int(found.group(5)))
    if policy.every < 1 or (policy.kind == "forecast" and policy.order not in (1, 2)):
        raise DiTError(f"{what} {spec!r}: use {SPELLING}")
    return policy


@dataclass(frozen=True)
class Newton:
    """Newton's divided differences of one trajectory's features through its last refreshes, kept as each refresh
    arrives so that a reuse costs one multiply-add per order: points are the refreshed calls (newest last), and
    diagonal[o] the difference of order o through the newest o + 1 of them, f[p_-o-1, ..., p_-1]. Order 0 (one
    point) is FORA's reuse of the last features as they are; Newton() is the empty table before the first refresh."""

    points: tuple[int, ...] = ()
    diagonal: tuple[torch.Tensor, ...] = ()

    def add(self, k: int, features: torch.Tensor, order: int) -> "Newton":
        """Through (k, features) and the newest `order` points kept: f[p_-o, ..., k] = (f[p_-o+1, ..., k] -
        f[p_-o, ..., p_-1]) / (k - p_-o), one difference per order."""
        diagonal = [features]
        for o in range(1, min(order, len(self.points)) + 1):
            diagonal.append((diagonal[-1] - self.diagonal[o - 1]) / (k - self.points[-o]))
        return Newton((*self.points, k)[-(order + 1):], tuple(diagonal))

    def at(self, k: int) -> torch.Tensor:
        """The polynomial through the points at call k, by Horner's rule in Newton's form (the newest features
        themselves at order 0, not a copy)."""
        value = self.diagonal[-1]
        for o in reversed(range(len(self.diagonal) - 1)):
            value = torch.add(self.diagonal[o], value, alpha=k - self.points[-o - 1])
        return value


def refreshed_calls(policy: CachePolicy | None, timesteps, interval: tuple[int, int] | None = None) -> list[bool]:
    """Per call of a trajectory at these timesteps, whether it refreshes: what CachingDenoiser does, as a pure
    function (every call without a policy). A call refreshes when the policy says so, or when its guided rows
    differ from the previous call's (a guidance interval's edge: the cached features are of other rows)."""
    total = len(timesteps)
    if policy is None:
        return [True] * total
    guided = [interval is None or interval[0] <= t <= interval[1] for t in timesteps]
    return [policy.refreshes(k, total) or k == 0 or guided[k] != guided[k - 1] for k in range(total)]


def join(parts: list[torch.Tensor]) -> torch.Tensor:
    """The parts concatenated; one part as it is (no copy of a trajectory's features)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def cache_bytes_per_image(feature_shape: tuple, policy: CachePolicy, guided: bool = True) -> int:
    """Float32 bytes a trajectory's cache holds per image: its features and their differences, for the
    conditional row and (guided) the null-class row."""
    values = 1
    for size in feature_shape:
        values *= size
    return 4 * values * policy.kept * (2 if guided else 1)


@dataclass(frozen=True)
class CacheState:
    """What a caching denoiser keeps for a trajectory between its calls (Trajectory.cache_state)."""

    newton: tuple[Newton, Newton]  # the divided differences of its rows' features and its guided rows' null features
    guided: torch.Tensor  # (U,) the rows guided when they were kept: other rows are another layout


@dataclass(frozen=True)
class Ask:
    """One trajectory's next call under its cache policy."""

    inputs: dict  # x, t, y, cfg_scale of its rows (the graph's names)
    guided: torch.Tensor  # (U,) its guided rows
    refresh: bool  # the full forward (its features kept), or a reuse of `features`
    features: tuple | None = None  # a reuse's (features (n, ...), null_features (U, ...)): kept or forecast


class CachingDenoiser(WrappedDenoiser):
    """A denoiser's refresh and reuse forms (its cached_forms()) driven by each trajectory's cache policy.

    Each trajectory's call either refreshes (the full forward, its features kept in its cache_state) or reuses
    (the kept or forecast features in, only the cheap parts computed); a trajectory without a policy is stepped by
    the base denoiser, as an uncached step runs it. Refreshing and reusing trajectories of one step run as one
    refresh call and one reuse call.
    """

    def __init__(self, base: Denoiser):
        super().__init__(base)
        self.refresh, self.reuse = base.cached_forms()  # named tensors in and out; the base owns and closes them
        self.name = f"{base.name}, cached steps"
        self.refreshed_rows = self.reused_rows = 0

    def cached_forms(self):
        return self.refresh, self.reuse

    def call_trajectories(self, trajectories) -> list[tuple]:
        """(eps, var_values) for each trajectory's next call."""
        asks = [self.ask(trajectory) for trajectory in trajectories]
        results = [None] * len(trajectories)
        plain = [i for i, ask in enumerate(asks) if ask is None]
        if plain:  # trajectories without a cache policy: the base denoiser, as an uncached step runs them
            for i, result in zip(plain, self.inner.call_trajectories([trajectories[i] for i in plain])):
                results[i] = result
        for refreshing in (True, False):
            group = [(i, ask) for i, ask in enumerate(asks) if ask is not None and ask.refresh == refreshing]
            if group:
                for (i, ask), outputs in zip(group, self.run_group([ask for _, ask in group], refreshing)):
                    results[i] = (outputs["eps"], outputs.get("var_values"))
                    if refreshing:
                        self.keep(trajectories[i], ask, outputs)
        return results

    def ask(self, trajectory) -> Ask | None:
        """The trajectory's next call: its inputs, guided rows, and whether it refreshes; None without a policy."""
        policy = trajectory.options.cache
        if policy is None:
            return None
        x, t, y, cfg_scale = trajectory.model_inputs()
        guided = guided_rows(cfg_scale)  # (U,): as every denoiser decides them
        state = trajectory.cache_state
        refresh = (policy.refreshes(trajectory.k, trajectory.sampler.num_calls) or state is None
                   or not torch.equal(state.guided, guided))
        features = None if refresh else tuple(newton.at(trajectory.k) for newton in state.newton)
        return Ask({"x": x, "t": t, "y": y, "cfg_scale": cfg_scale}, guided, refresh, features)

    def run_group(self, asks: list[Ask], refreshing: bool) -> list[dict]:
        """One graph call for the asks (rows concatenated, guided indices offset), split back per ask."""
        sizes = [len(ask.inputs["x"]) for ask in asks]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        inputs = {name: join([ask.inputs[name] for ask in asks]) for name in asks[0].inputs}
        inputs[GUIDED] = join([ask.guided + offset for ask, offset in zip(asks, offsets)])
        if not refreshing:
            inputs["features"] = join([ask.features[0] for ask in asks])
            inputs["null_features"] = join([ask.features[1] for ask in asks])
            self.reused_rows += len(inputs["x"]) + len(inputs[GUIDED])
        else:
            self.refreshed_rows += len(inputs["x"]) + len(inputs[GUIDED])
        outputs = (self.refresh if refreshing else self.reuse)(inputs)
        guided_sizes = [len(ask.guided) for ask in asks]
        split = {name: value.split(guided_sizes if name == "null_features" else sizes)
                 for name, value in outputs.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(asks))]

    def keep(self, trajectory, ask: Ask, outputs: dict) -> None:
        """A refreshed trajectory's features (its rows, then its null rows) added to its differences."""
        state, order, k = trajectory.cache_state, trajectory.options.cache.order, trajectory.k
        features = (outputs["features"], outputs["null_features"])  # (n, depth, 2, T, D), (U, depth, 2, T, D)
        same_rows = state is not None and torch.equal(state.guided, ask.guided)
        kept = state.newton if same_rows else (Newton(), Newton())  # other guided rows: another layout, anew
        trajectory.cache_state = CacheState(tuple(newton.add(k, part, order) for newton, part in zip(kept, features)),
                                            ask.guided)


def cached_denoiser(denoiser: Denoiser) -> CachingDenoiser:
    """The denoiser with cached steps: its own refresh and reuse forms (Denoiser.cached_forms: the PyTorch
    reference's, or the refresh and reuse graphs its manifest names, exported with dit-export --cached-steps).
    Each trajectory names its own policy (trajectory.options.cache)."""
    return denoiser if isinstance(denoiser, CachingDenoiser) else CachingDenoiser(denoiser)
