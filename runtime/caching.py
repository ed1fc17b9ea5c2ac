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
pure (refreshes(k, total)); CachingDenoiser keeps each trajectory's features in its memory, so a
sample's cache travels with it in any batch (dit_ref.cached is what a refresh and a reuse compute). A
forecast's divided differences are brought up to date once per refresh (Newton), so a reuse costs one
multiply-add of the features per order, not the whole table again.
"""

import re
from dataclasses import dataclass

import torch

from dit_ref.contract import GUIDED
from dit_ref.errors import DiTError
from runtime.denoiser import Denoiser

EDGE_CALLS = 2  # always refreshed at both ends of a trajectory
SPELLING = "fora:N (reuse for N-1 calls) or forecast:N:ORDER (ORDER 1 or 2), N >= 1, e.g. fora:3"
NO_PAIR = ("this graph was exported without its cached-steps graphs; re-export it with dit-export --cached-steps "
           "to use --cache")


@dataclass(frozen=True)
class CachePolicy:
    kind: str  # "fora" or "forecast"
    every: int  # N: a refresh every N calls between the edges
    order: int = 0  # forecast: the divided differences' order (1 or 2); fora: 0 (the last features as they are)

    @property
    def spec(self) -> str:
        return f"fora:{self.every}" if self.kind == "fora" else f"forecast:{self.every}:{self.order}"

    @property
    def kept(self) -> int:
        """Feature-sized tensors kept per trajectory and part: one difference per order, and the features."""
        return self.order + 1

    def refreshes(self, k: int, total: int) -> bool:
        """Whether call k of total refreshes (the edges, then every N-th call after the first edge)."""
        return k < EDGE_CALLS or k >= total - EDGE_CALLS or (k - EDGE_CALLS) % self.every == 0


def parse_cache(spec, what: str = "--cache") -> CachePolicy | None:
    """"fora:3" / "forecast:3:2" / a CachePolicy / None -> CachePolicy or None; DiTError for another spelling."""
    if spec is None or isinstance(spec, CachePolicy):
        return spec
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


class CachingDenoiser(Denoiser):
    """A refresh and a reuse graph (or the PyTorch reference's two forms) driven by a cache policy.

    Driven through the step API (runtime.sampling.step sees `stateful`): each trajectory's call either
    refreshes (the full forward, its features kept in the trajectory's memory) or reuses (the cached or
    forecast features in, only the cheap parts computed). Refreshing and reusing trajectories of one step
    run as one refresh call and one reuse call.
    """

    stateful = True

    def __init__(self, base: Denoiser, refresh, reuse, policy: CachePolicy | None):
        """refresh(inputs) -> outputs and reuse(inputs) -> outputs take and give named tensors (run_named).
        policy: every trajectory's, unless its memory names its own ("policy": a CachePolicy, or None for none,
        whose calls then go to the base denoiser: a service's requests choose theirs)."""
        self.base, self.refresh, self.reuse, self.policy = base, refresh, reuse, policy
        self.provenance, self.batch_range, self.device = base.provenance, base.batch_range, base.device
        self.manifest = base.manifest
        self.name = f"{base.name}, cache {policy.spec}" if policy else f"{base.name}, cached steps per request"
        self.refreshed_rows = self.reused_rows = 0

    def __call__(self, x, t, y, cfg_scale):
        raise DiTError("a caching denoiser is driven by trajectories (runtime.sampling.step), not called directly")

    def call_trajectories(self, trajectories) -> list[tuple]:
        """(eps, var_values) for each trajectory's next call."""
        asks = [self.ask(trajectory) for trajectory in trajectories]
        results = [None] * len(trajectories)
        plain = [i for i, ask in enumerate(asks) if ask is None]
        if plain:  # trajectories without a cache policy: the base denoiser, as an uncached step runs them
            parts = [trajectories[i].model_inputs() for i in plain]
            eps, var_values = self.base(*[join(list(column)) for column in zip(*parts)])
            sizes = [len(trajectories[i]) for i in plain]
            for i, eps_i, var_i in zip(plain, eps.split(sizes), [None] * len(sizes) if var_values is None
                                       else var_values.split(sizes)):
                results[i] = (eps_i, var_i)
        for refreshing in (True, False):
            group = [(i, ask) for i, ask in enumerate(asks) if ask is not None and ask["refresh"] == refreshing]
            if group:
                for (i, ask), outputs in zip(group, self.run_group([ask for _, ask in group], refreshing)):
                    results[i] = (outputs["eps"], outputs.get("var_values"))
                    if refreshing:
                        self.keep(trajectories[i], ask, outputs)
        return results

    def policy_of(self, trajectory) -> CachePolicy | None:
        return trajectory.memory["policy"] if "policy" in trajectory.memory else self.policy

    def ask(self, trajectory) -> dict | None:
        """The trajectory's next call: its inputs, guided rows, and whether it refreshes; None without a policy."""
        policy = self.policy_of(trajectory)
        if policy is None:
            return None
        x, t, y, cfg_scale = trajectory.model_inputs()
        guided = torch.nonzero(cfg_scale != 1).flatten()  # (U,): as every denoiser decides them
        memory = trajectory.memory
        refresh = (policy.refreshes(trajectory.k, trajectory.sampler.num_calls) or "newton" not in memory
                   or not torch.equal(memory["guided"], guided))
        ask = {"inputs": {"x": x, "t": t, "y": y, "cfg_scale": cfg_scale}, GUIDED: guided, "refresh": refresh}
        if not refresh:  # (features (n, ...), null_features (U, ...)) at this call: kept (fora) or forecast
            ask["features"] = tuple(newton.at(trajectory.k) for newton in memory["newton"])
        return ask

    def run_group(self, asks: list[dict], refreshing: bool) -> list[dict]:
        """One graph call for the asks (rows concatenated, guided indices offset), split back per ask."""
        sizes = [len(ask["inputs"]["x"]) for ask in asks]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        inputs = {name: join([ask["inputs"][name] for ask in asks]) for name in asks[0]["inputs"]}
        inputs[GUIDED] = join([ask[GUIDED] + offset for ask, offset in zip(asks, offsets)])
        if not refreshing:
            inputs["features"] = join([ask["features"][0] for ask in asks])
            inputs["null_features"] = join([ask["features"][1] for ask in asks])
            self.reused_rows += len(inputs["x"]) + len(inputs[GUIDED])
        else:
            self.refreshed_rows += len(inputs["x"]) + len(inputs[GUIDED])
        outputs = (self.refresh if refreshing else self.reuse)(inputs)
        guided_sizes = [len(ask[GUIDED]) for ask in asks]
        split = {name: value.split(guided_sizes if name == "null_features" else sizes)
                 for name, value in outputs.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(asks))]

    def keep(self, trajectory, ask: dict, outputs: dict) -> None:
        """A refreshed trajectory's features (its rows, then its null rows) added to its differences."""
        memory, order, k = trajectory.memory, self.policy_of(trajectory).order, trajectory.k
        features = (outputs["features"], outputs["null_features"])  # (n, depth, 2, T, D), (U, depth, 2, T, D)
        same_rows = "guided" in memory and torch.equal(memory["guided"], ask[GUIDED])
        kept = memory["newton"] if same_rows else (Newton(), Newton())  # other guided rows: another layout, anew
        memory["newton"] = tuple(newton.add(k, part, order) for newton, part in zip(kept, features))
        memory["guided"] = ask[GUIDED]

    def close(self) -> None:
        self.base.close()


def cached_denoiser(denoiser: Denoiser, policy) -> CachingDenoiser:
    """The denoiser with cached steps: its own cached_forms(), the PyTorch reference's two forms or the refresh and
    reuse graphs its manifest names (exported with dit-export --cached-steps, loaded once by the denoiser with its
    backend and options). policy None: each trajectory names its own in its memory (a service's requests)."""
    policy = parse_cache(policy)
    return CachingDenoiser(denoiser, *denoiser.cached_forms(), policy)
