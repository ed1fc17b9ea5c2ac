"""dit-tune's search over the space: the exact point, each lever measured alone from it, combinations walked in
order of predicted speed (runtime.tuning.search), and the named points.

    exact     the reference: the FP32 graph with the backend dit-run picks, the sampler and steps asked for,
              every step guided, no cache
    faithful  the fastest setting whose pictures stay within a paired budget of exact's (mean PSNR, dB)
    fast      the fastest within a population budget where the model has a judge (class accuracy at most
              `accuracy_points` below exact's, Fréchet distance within exact's interval), else within a
              looser paired budget

Levers: an engine (another precision or backend), a sampler and steps, a guidance interval, and a cache policy
(FORA, the forecast, and schedules calibrated on this model's feature changes at FORA's refresh counts).
"""

import math
from dataclasses import dataclass, replace

import numpy as np

from dit_ref.errors import DiTError
from runtime.caching import parse_cache, refreshed_calls
from runtime.sampling import sampler_from_name
from runtime.tuning import schedule
from runtime.tuning.search import Candidate, Verdict, walk
from runtime.tuning.space import INTERVALS, SAMPLERS, Setting
CACHES = ("fora:2", "fora:3", "fora:4", "forecast:3:2")
CALIBRATED_LIKE = ("fora:2", "fora:3", "fora:4")  # calibrated schedules are made with these refresh counts
CALIBRATION_SAMPLES = 4  # trajectories whose feature changes calibrate a schedule (seeds apart from the pairs')
SANITY_DB = 12.0  # below this a setting's pictures are other pictures: not worth a population check


@dataclass(frozen=True)
class Budgets:
    faithful_db: float = 35.0  # faithful: mean paired PSNR against exact's pictures, at least
    fast_db: float = 25.0  # fast without a judge: the looser paired budget
    accuracy_points: float = 1.0  # fast with a judge: class accuracy at most this many points below exact's


@dataclass(frozen=True)
class Pairs:
    screen: int = 16  # pairs that screen a candidate
    confirm: int = 64  # pairs that confirm one (and time it)
    population: int = 1000  # samples the judge scores (fast, with a judge)

    def fitted(self, exact_seconds: float, budget_s: float) -> "Pairs":
        """These pairs, fewer where exact's confirming samples (exact_seconds each) would take more than EXACT_SHARE
        of the budget: a slow model gets wider intervals rather than a run that samples only exact. Never more than
        asked; when fewer, at least 8 to confirm and 4 to screen."""
        confirm = min(self.confirm, max(MIN_CONFIRM, int(EXACT_SHARE * budget_s / exact_seconds)))
        if confirm == self.confirm:
            return self
        return replace(self, screen=min(self.screen, max(MIN_SCREEN, confirm // 2)), confirm=confirm)


EXACT_SHARE = 0.25  # of the budget exact's confirming samples may take
MIN_SCREEN, MIN_CONFIRM = 4, 8


class Search:
    """The levers and named points of one tuning run (tuner: runtime.tuning.tuner.Tuner)."""

    def __init__(self, tuner, engines: list, exact: Setting, budgets: Budgets, pairs: Pairs, judge=None,
                 time_left=lambda need=0.0: True, echo=print):
        self.tuner, self.engines, self.exact, self.budgets = tuner, engines, exact, budgets
        self.pairs, self.judge, self.time_left, self.echo = pairs, judge, time_left, echo
        self.lever_mse: dict[str, np.ndarray] = {}  # lever key -> (screen,) per-pair error against its base
        self.measured: list[Setting] = []  # every setting sampled, in order
        self.unfitted: set[str] = set()  # keys of the current walk's settings left out: they did not fit the budget

    # --- levers --------------------------------------------------------------------------------------------

    def error(self, setting: Setting, base: Setting) -> np.ndarray:
        """(screen,) per-pair relative squared error of setting against base, measured once; infinite for a setting
        that fails (e.g. its samples are not finite), which no budget passes."""
        key = f"{setting.key} || {base.key}"
        if key not in self.lever_mse:
            try:
                self.lever_mse[key] = self.tuner.mse(setting, base, self.pairs.screen)
                self.note(setting)
            except DiTError as error:
                self.echo(f"  {setting.label()} failed, left out: {error}")
                self.lever_mse[key] = np.full(self.pairs.screen, np.inf)
        return self.lever_mse[key]

    def note(self, setting: Setting) -> None:
        if setting not in self.measured:
            self.measured.append(setting)

    def steps_grid(self) -> list[tuple[str, int]]:
        grid = [(self.exact.sampler, self.exact.steps)]
        for sampler, counts in SAMPLERS.items():
            grid += [(sampler, steps) for steps in counts if (sampler, steps) != grid[0]]
        return grid

    def measure_levers(self, hold: float = 0.0) -> None:
        """Each engine, sampler and steps, and guidance interval alone, from exact (screen pairs), cheapest first,
        while one more fits the budget with `hold` seconds kept for the named points."""
        exact = self.exact
        levers = [exact.with_engine(engine) for engine in self.engines if engine != exact.engine]
        levers += [exact.with_steps(sampler, steps) for sampler, steps in self.steps_grid()[1:]]
        levers += [exact.with_interval(interval) for interval in INTERVALS]
        for setting in sorted(levers, key=self.tuner.predicted_seconds):
            if not self.time_left(hold + self.pairs.screen * self.tuner.predicted_seconds(setting)):
                self.echo("time budget: the remaining levers are not measured (the rest is kept for the points)")
                return
            self.error(setting, exact)
            self.echo(f"  lever {setting.label()}: {self.psnr_of([self.error(setting, exact)]):.1f} dB")

    @property
    def cached_engine(self):
        """The engine cache policies are measured on: exact's, else the first with its cached-steps pair."""
        return next((engine for engine in [self.exact.engine, *self.engines] if engine.cached_steps), None)

    def caches_at(self, base: Setting) -> list[str]:
        """Cache policies for an uncached setting on the cached engine: FORA, the forecast, and schedules calibrated
        here with FORA's refresh counts."""
        timesteps, interval = base.timesteps, base.interval
        counts = {sum(refreshed_calls(parse_cache(spec), timesteps, interval)) for spec in CALIBRATED_LIKE}
        changes = self.feature_changes(base)
        forced = schedule.interval_edges(timesteps, interval)
        calibrated = {"refresh:" + ",".join(map(str, schedule.schedule_for(changes, count, forced)))
                      for count in sorted(counts)}
        return [*CACHES, *sorted(calibrated, key=len)]

    def feature_changes(self, base: Setting) -> np.ndarray:
        """The relative change of the features between calls of the setting (runtime.tuning.schedule), kept."""
        found = self.tuner.store.get("feature_changes", base.key)
        if found is None:
            labels = self.tuner.labels(CALIBRATION_SAMPLES)
            changes = schedule.feature_changes(self.tuner.denoiser(base.engine), sampler_from_name(base.sampler,
                                               base.steps), labels, self.tuner.options.seed + 1,
                                               self.tuner.options.cfg_scale, base.call_options)
            found = np.where(np.isnan(changes), -1.0, changes).tolist()
            self.tuner.store.put("feature_changes", base.key, found)
        changes = np.asarray(found, dtype=np.float64)
        return np.where(changes < 0, np.nan, changes)

    def measure_caches(self, sampler: str, steps: int) -> list[str]:
        """Each cache policy at this sampler and steps, against the same setting uncached (screen pairs), while the
        time left also holds the confirming pairs of one of them (a lever that cannot be confirmed is time lost)."""
        if self.cached_engine is None:
            return []
        base = Setting(self.cached_engine, sampler, steps)
        seconds = self.tuner.predicted_seconds
        calibration = CALIBRATION_SAMPLES * seconds(base)  # every call refreshes
        confirming = (self.pairs.confirm - self.pairs.screen) * seconds(base)  # at most: a cached form is cheaper
        if not self.time_left(calibration + self.pairs.screen * seconds(base) + confirming):
            return []
        specs = self.caches_at(base)
        confirming = (self.pairs.confirm - self.pairs.screen) * max(seconds(base.with_cache(spec)) for spec in specs)
        for spec in specs:
            if not self.time_left(confirming + self.pairs.screen * seconds(base.with_cache(spec))):
                break
            self.error(base.with_cache(spec), base)
        return [spec for spec in specs if f"{base.with_cache(spec).key} || {base.key}" in self.lever_mse]

    # --- combinations --------------------------------------------------------------------------------------

    def psnr_of(self, errors: list[np.ndarray]) -> float:
        """The predicted mean PSNR of pairs whose errors add."""
        total = np.sum(errors, axis=0)
        return float(np.mean(np.minimum(-10 * np.log10(np.maximum(total, 1e-30)), 100.0)))

    def lever_errors(self, setting: Setting) -> list[np.ndarray] | None:
        """The measured errors of the levers a setting combines (None when one is not measured)."""
        keys = [f"{lever.key} || {base.key}" for lever, base in setting.levers(self.exact, self.cached_engine)]
        if any(key not in self.lever_mse for key in keys):
            return None
        return [self.lever_mse[key] for key in keys] or [np.zeros(self.pairs.screen)]

    def candidates(self, caches: dict) -> list[Candidate]:
        """Every combination whose levers are measured, with its predicted speed and PSNR against exact."""
        found = []
        for engine in self.engines:
            for sampler, steps in self.steps_grid():
                for interval in (None, *INTERVALS):
                    for cache in (None, *caches.get((sampler, steps), ())):  # measured without an interval
                        if cache is not None and not engine.cached_steps:
                            continue
                        setting = Setting(engine, sampler, steps, interval, cache)
                        errors = self.lever_errors(setting)
                        if errors is not None:
                            found.append(Candidate(setting.key, self.tuner.predicted_seconds(setting),
                                                   self.psnr_of(errors), setting))
        return found

    # --- the named points ----------------------------------------------------------------------------------

    def paired_check(self, budget_db: float):
        """check(candidate) for walk: screen, then confirm, against exact's pictures."""
        def check(candidate: Candidate) -> Verdict:
            setting = candidate.setting
            if not self.fits(setting, self.pairs.confirm):  # (its kept samples count): no screening what cannot confirm
                return Verdict(False)
            self.note(setting)
            screened = self.tuner.fidelity(setting, self.exact, self.pairs.screen)["psnr"]["mean"]
            if screened < budget_db:
                self.echo(f"  screened {setting.label()}: {screened:.1f} dB, below {budget_db:g}")
                return Verdict(False)
            if not self.fits(setting, self.pairs.confirm):
                return Verdict(False)
            confirmed = self.tuner.fidelity(setting, self.exact, self.pairs.confirm)["psnr"]["mean"]
            seconds = self.tuner.seconds_per_image(setting)
            self.echo(f"  confirmed {setting.label()}: {confirmed:.1f} dB on {self.pairs.confirm} pairs, "
                      f"{seconds:.4f} s/image")
            return Verdict(confirmed >= budget_db, seconds)

        return check

    def fits(self, setting: Setting, n: int) -> bool:
        """Whether n samples of the setting fit the budget (the first that does not is said, the others counted)."""
        if self.time_left(self.tuner.seconds_to_sample(setting, n)):
            return True
        if not self.unfitted:
            self.echo(f"  not measured {setting.label()}: its {n} samples do not fit the budget")
        self.unfitted.add(setting.key)
        return False

    def population_check(self):
        """check(candidate) for walk with a judge: a sanity screen, then the judge on the candidate's levers added one
        at a time at its own sampler and steps (each judged once and kept; the first that fails ends the check)."""
        exact = self.tuner.population(self.exact, self.judge, self.pairs.population)
        floor = exact["class_accuracy"] - self.budgets.accuracy_points / 100
        ceiling = exact["frechet_distance_interval"][1]

        def judged(setting: Setting) -> bool:
            known = self.tuner.knows_population(setting, self.pairs.population)
            if not known and not self.fits(setting, self.pairs.population):
                return False
            self.note(setting)
            scores = self.tuner.population(setting, self.judge, self.pairs.population)
            passed = scores["class_accuracy"] >= floor and scores["frechet_distance"] <= ceiling
            if not known:
                    self.echo(f"  judged {setting.label()}: accuracy {100 * scores['class_accuracy']:.1f}% (at least "
                          f"{100 * floor:.1f}), FD {scores['frechet_distance']:.1f} (at most {ceiling:.1f}), "
                          f"{self.tuner.seconds_per_image(setting):.4f} s/image: {'passes' if passed else 'fails'}")
            return passed

        def check(candidate: Candidate) -> Verdict:
            setting = candidate.setting
            if not self.fits(setting, self.pairs.screen):
                return Verdict(False)
            if self.tuner.fidelity(setting, self.exact, self.pairs.screen)["psnr"]["mean"] < SANITY_DB:
                return Verdict(False)
            if not all(judged(step) for step in self.lever_steps(setting)):
                return Verdict(False)
            return Verdict(True, self.tuner.seconds_per_image(setting))

        return check

    def lever_steps(self, setting: Setting) -> list[Setting]:
        """The setting built up one lever at a time at its own sampler and steps (runtime.tuning.space)."""
        first = self.exact.engine if self.exact.engine.cached_steps or setting.cache is None else setting.engine
        return setting.built_up(first)

    def find(self, check, budget_db: float, caches: dict) -> Setting | None:
        def checked(candidate: Candidate) -> Verdict:  # a candidate that fails to sample fails the check
            try:
                return check(candidate)
            except DiTError as error:
                self.echo(f"  {candidate.setting.label()} failed: {error}")
                return Verdict(False)

        self.unfitted = set()
        best, _ = walk(self.candidates(caches), budget_db, checked, time_left=self.time_left)
        if len(self.unfitted) > 1:
            self.echo(f"  {len(self.unfitted) - 1} more not measured: they do not fit the budget")
        return None if best is None else best.setting

    def cache_grid(self, budget_db: float, most: int = 4) -> dict:
        """Cache levers at the sampler and step counts worth caching: predicted to pass the budget uncached, and whose
        cheapest cached form (every call but the first a reuse) is predicted faster than the fastest of them
        uncached; those with the most to gain first."""
        if self.cached_engine is None:
            return {}
        plain = {pair: Setting(self.cached_engine, *pair) for pair in self.steps_grid()}
        passing = {pair: setting for pair, setting in plain.items() if self.lever_errors(setting) is not None
                   and self.psnr_of(self.lever_errors(setting)) >= budget_db}
        if not passing:
            return {}
        fastest = min(self.tuner.predicted_seconds(setting) for setting in passing.values())
        floor = {pair: self.tuner.predicted_seconds(setting.with_cache("refresh:0")) for pair, setting in passing.items()}
        worth = sorted((pair for pair in passing if floor[pair] < fastest), key=floor.get)
        caches = {}
        for sampler, steps in worth[:most]:
            if not self.time_left():
                break
            caches[(sampler, steps)] = self.measure_caches(sampler, steps)
        return caches


def summary_of(tuner, setting: Setting, exact: Setting, pairs: Pairs, judge=None) -> dict:
    """What a profile records of a named point: its settings, measured s/image, fidelity and, where the judge scored
    it within the budget, quality."""
    n = pairs.confirm
    record = {"settings": {"graph": setting.engine.graph, "backend": setting.engine.backend,
                           "load": dict(setting.engine.load), **setting.request},
              "label": setting.label(), "seconds_per_image": tuner.seconds_per_image(setting),
              "predicted_seconds_per_image": tuner.predicted_seconds(setting),
              "fidelity": tuner.fidelity(setting, exact, n) if setting != exact else None}
    if judge is not None and tuner.knows_population(setting, pairs.population):
        record["quality"] = tuner.population(setting, judge, pairs.population)
    return record


def speedup(record: dict, exact: dict) -> float | None:
    seconds, reference = record.get("seconds_per_image"), exact.get("seconds_per_image")
    return None if not seconds or not reference else reference / seconds


def finite(value: float) -> float | None:
    return None if value is None or math.isinf(value) else value
