"""One dit-tune run: the stages in order, within the time budget, and the profile it writes.

    costs    each engine's calls timed (runtime.tuning.costs)
    exact    the reference's pictures (and, with a judge, its population quality)
    levers   each engine, sampler and steps, and guidance interval alone, against exact's pictures
    faithful the cache policies at the fastest step counts that keep the budget, then the walk
    fast     likewise, with the judge (or the looser paired budget)
    profile  the named points, every setting measured (the frontier), the machine, the versions, the model
"""

import time
from dataclasses import dataclass
from pathlib import Path

from dit_ref.contract import read_manifest
from dit_ref.errors import DiTError
from runtime.tuning.points import SANITY_DB, Budgets, Pairs, Search, speedup, summary_of
from runtime.tuning.space import Setting, engines_beside, exact_engine
from runtime.tuning.tuner import Options, Store, Tuner, require_graph

RESERVE_S = 15  # kept at the end of the budget for the profile and its plot
POINTS_SHARE = 0.35  # of the time left after exact, kept from the levers for the faithful and fast walks


@dataclass(frozen=True)
class TuneRequest:
    graph: Path
    seconds: float  # the wall-clock budget
    sampler: str
    steps: int
    cfg_scale: float
    faithful_db: float
    fast_db: float
    accuracy_points: float
    pairs: tuple[int, int]  # screen, confirm
    population: int
    batch: int
    threads: int | None
    seed: int
    out: Path | None
    work_dir: Path | None
    fresh: bool


class Clock:
    """The budget's clock: whether there is time left for more measurements."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.monotonic(), seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        """Seconds of measuring left."""
        return self.seconds - RESERVE_S - self.elapsed()

    def left(self, need: float = 0.0) -> bool:
        """Whether `need` more seconds of measuring fit in the budget."""
        return self.elapsed() + need < self.seconds - RESERVE_S


def run_tuning(request: TuneRequest, echo=print) -> dict:
    """Measure, search and write the profile; returns {"profile": path, "table": text, "summary": record}."""
    from runtime.profile import SUFFIX, profile_path_for
    from runtime.sampling import sampler_from_name
    from runtime.tuning.judge import judge_for

    check_budget(request.seconds)
    clock = Clock(request.seconds)
    graph = require_graph(request.graph)
    if sampler_from_name(request.sampler, request.steps).stochastic:  # DiTError for an unknown one
        raise DiTError(f"--sampler {request.sampler} is stochastic: its pictures change with the steps' noise, so "
                       f"settings cannot be compared picture by picture; tune a deterministic sampler (ddim, dpm++, "
                       f"unipc) and judge DDPM by the yardstick (benchmarks/quality.py)")
    out = request.out or profile_path_for(graph)
    if not out.name.endswith(SUFFIX):
        raise DiTError(f"--out {out}: a profile's name ends in {SUFFIX} (dit-run --profile finds it by that)")
    folder = request.work_dir or out.with_name(out.name.removesuffix(".json") + ".tune")
    found = engines_beside(graph)
    for note in found.notes:
        echo(note)
    exact = Setting(exact_engine(found, graph), request.sampler, request.steps)
    options = Options(request.seed, request.cfg_scale, request.batch, request.threads)
    store = Store(folder, options.conditions(graph.parent, found.engines), echo, fresh=request.fresh)
    tuner = Tuner(graph, options, store, echo)
    manifest = read_manifest(graph)
    judge = judge_for(manifest.model)
    budgets = Budgets(request.faithful_db, request.fast_db, request.accuracy_points)
    try:
        pairs = fitted_pairs(request, tuner.predicted_seconds(exact), echo)
        search = Search(tuner, found.engines, exact, budgets, pairs, judge, clock.left, echo)
        points = stages(search, tuner, found.engines, exact, judge, clock, echo)
        record = profile_record(search, tuner, manifest, exact, points, budgets, pairs, found.notes, clock)
        converged_fidelity(record, tuner, exact, points, pairs, clock, echo)
    finally:
        tuner.close()
    return write_outputs(out, record, echo)


def fitted_pairs(request: TuneRequest, exact_seconds: float, echo) -> Pairs:
    """The pairs asked for, fewer where exact is slow here (Pairs.fitted), said when they are."""
    asked = Pairs(*request.pairs, request.population)
    pairs = asked.fitted(exact_seconds, request.seconds)
    if pairs != asked:
        echo(f"pairs: {pairs.screen}:{pairs.confirm}, not {asked.screen}:{asked.confirm}: exact takes {exact_seconds:.2f} "
             f"s an image here, and its pairs may take a quarter of --time at most (a longer --time gives more)")
    return pairs


def stages(search: Search, tuner: Tuner, engines, exact: Setting, judge, clock: Clock, echo) -> dict:
    """The named points found: {"exact": Setting, "faithful": Setting or None, "fast": ...}."""
    echo(f"costs: timing {len(engines)} engine(s) at batch {tuner.options.batch}")
    timed = []
    for engine in engines:
        if engine != exact.engine and not clock.left():
            echo(f"  {engine.label}: not timed within the budget, left out")
            continue
        try:
            costs = tuner.costs(engine)
        except DiTError as error:
            if engine == exact.engine:
                raise
            echo(f"  {engine.label}: failed, left out: {error}")
            continue
        timed.append(engine)
        echo(f"  {engine.label}: " + ", ".join(f"{kind} {guided:.1f}/{plain:.1f} ms" for kind, (guided, plain)
                                               in costs.ms.items()) + " (every row guided / none)")
    search.engines = timed
    n = search.pairs.population
    need = 0.0 if tuner.knows_population(exact, n) else n * tuner.predicted_seconds(exact)
    judged = judge is not None and clock.left(need)  # exact's population (the fast point's bar) fits the budget
    wanted = max(search.pairs.confirm, n if judged else 0)
    echo(f"exact: {exact.label()}, {wanted} samples")
    tuner.samples(exact, wanted)
    search.note(exact)
    echo(f"  {tuner.seconds_per_image(exact):.4f} s/image")
    echo(f"levers: each alone from exact, {search.pairs.screen} pairs ({clock.elapsed():.0f} s so far)")
    search.measure_levers(hold=POINTS_SHARE * clock.remaining())
    budgets = search.budgets
    echo(f"faithful: the fastest at {budgets.faithful_db:g} dB or more against exact's pictures")
    faithful = search.find(search.paired_check(budgets.faithful_db), budgets.faithful_db,
                           search.cache_grid(budgets.faithful_db))
    if faithful is not None and judged and clock.left(n * tuner.predicted_seconds(faithful)):
        tuner.population(faithful, judge, n)  # its quality, for the profile
    if judge is not None and not judged:
        echo(f"fast: no time for the judge's {n} samples of exact (about {need:.0f} s); give a longer --time or a "
             f"smaller --population")
        fast = None
    elif judge is not None:
        echo(f"fast: the fastest within {budgets.accuracy_points:g} point(s) of exact's class accuracy and its "
             f"Fréchet interval ({search.pairs.population} samples)")
        fast = search.find(search.population_check(), SANITY_DB, search.cache_grid(SANITY_DB))
    else:
        echo(f"fast: the fastest at {budgets.fast_db:g} dB or more (no judge for this model)")
        fast = search.find(search.paired_check(budgets.fast_db), budgets.fast_db, search.cache_grid(budgets.fast_db))
    return {"exact": exact, "faithful": faithful, "fast": fast}


def profile_record(search: Search, tuner: Tuner, manifest, exact: Setting, points: dict, budgets: Budgets,
                   pairs: Pairs, notes: list[str], clock: Clock) -> dict:
    """The profile's record: the named points, the frontier, and what they were measured on."""
    from dataclasses import asdict

    from runtime.profile import machine_record

    named = {name: summary_of(tuner, setting, exact, pairs, search.judge) for name, setting in points.items()
             if setting is not None}
    for record in named.values():
        record["speedup"] = speedup(record, named["exact"])
    frontier = [frontier_row(tuner, setting, exact, pairs) for setting in search.measured
                if setting == exact or tuner.kept(setting) >= pairs.screen]  # (one that failed to sample: none kept)
    missing = [name for name, setting in points.items() if setting is None]
    return {"model": manifest.model, "image_size": manifest.image_size,
            "checkpoint": {"source": manifest.checkpoint.source, "sha256": manifest.checkpoint.sha256},
            "machine": machine_record(), "tuned_at": {"cfg_scale": tuner.options.cfg_scale, "seed": tuner.options.seed,
                                                      "batch": tuner.options.batch, "threads": tuner.options.threads},
            "budgets": asdict(budgets), "pairs": asdict(pairs), "seconds": round(clock.elapsed(), 1),
            "judge": None if search.judge is None else search.judge.name, "notes": notes,
            "not_found": missing, "points": named, "backends": fastest_backends(tuner, search.engines),
            "frontier": frontier}


def converged_fidelity(record: dict, tuner: Tuner, exact: Setting, points: dict, pairs: Pairs, clock: Clock,
                       echo) -> None:
    """Each named point's fidelity to a converged solution of the ODE (runtime.tuning.reference), when exact's
    sampler is deterministic and the budget has room for it (DDIM 1000, else DPM++ 250): how far exact's own
    pictures are from the truth, and each point's. Recorded as fidelity_converged."""
    from runtime.sampling import sampler_from_name
    from runtime.tuning.reference import CONVERGED, CONVERGED_CHEAPER

    if sampler_from_name(exact.sampler, exact.steps).stochastic:
        return
    room = clock.seconds - RESERVE_S - clock.elapsed()
    for sampler, steps in (CONVERGED, CONVERGED_CHEAPER):
        reference = exact.with_steps(sampler, steps)
        if tuner.predicted_seconds(reference) * pairs.confirm < room / 2:
            break
    else:
        echo(f"converged reference: no room left in the budget for {pairs.confirm} pairs of {CONVERGED_CHEAPER}")
        return
    echo(f"converged reference: {reference.label()}, {pairs.confirm} pairs")
    for name, setting in points.items():
        if setting is not None:
            record["points"][name]["fidelity_converged"] = {"reference": reference.label(),
                                                            **tuner.fidelity(setting, reference, pairs.confirm)}


def fastest_backends(tuner: Tuner, engines) -> dict:
    """Per graph, the backend whose guided call measured fastest here: what --backend auto takes (runtime.profile)."""
    fastest = {}
    for engine in engines:
        if engine.load:
            continue
        ms = tuner.costs(engine).of("plain", True)
        if engine.graph not in fastest or ms < fastest[engine.graph][1]:
            fastest[engine.graph] = (engine.backend, ms)
    return {graph: backend for graph, (backend, _) in fastest.items()}


def frontier_row(tuner: Tuner, setting: Setting, exact: Setting, pairs: Pairs) -> dict:
    """One measured setting: its label, speed (measured, else predicted) and fidelity at the most pairs measured."""
    n = pairs.confirm if tuner.store.get("fidelity", f"{setting.key} || {exact.key} || {pairs.confirm}") else pairs.screen
    measured = tuner.seconds_per_image(setting)
    return {"key": setting.key, "label": setting.label(), "settings": setting.request, "engine": setting.engine.key,
            "seconds_per_image": measured, "predicted_seconds_per_image": tuner.predicted_seconds(setting),
            "fidelity": None if setting == exact else tuner.fidelity(setting, exact, n)}


def write_outputs(out: Path, record: dict, echo) -> dict:
    """The profile JSON (and its frontier plot beside, when matplotlib is here); the table of its points."""
    from runtime.profile import write_profile
    from runtime.tuning.report import plot_frontier, points_table

    write_profile(out, record)
    echo(f"wrote {out}")
    plot = out.with_name(out.name.removesuffix(".json") + ".png")
    if plot_frontier(record, plot):
        echo(f"wrote {plot}")
    return {"profile": out, "table": points_table(record), "summary": record}


def check_budget(seconds: float) -> None:
    if seconds < 2 * RESERVE_S:
        raise DiTError(f"--time: {seconds:g} s leaves no time to measure; give at least {2 * RESERVE_S} s")
