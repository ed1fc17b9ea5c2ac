"""The settings the README recommended by hand before dit-tune, measured against a tuning profile's exact pictures
and marked on its frontier.

    python benchmarks/hand_picked.py graphs/fashion-28.profile.json [--work-dir DIR] [--json PATH]

Each setting runs on the profile's exact engine (with its cached-steps pair for the cache policies) with the
profile's seeds, cfg scale, batch and confirming pairs, and is compared pair by pair with exact's pictures kept in
the tuner's work folder (runtime.tuning.tuner: nothing measured there is sampled again). The frontier plot is drawn
again with these settings marked by name (<profile>.hand-picked.png), and a table is printed.
"""

import json
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from dit_ref.errors import DiTError  # noqa: E402

# name -> (sampler, steps, guidance interval, cache): the README's recommendations before dit-tune (BF16 compute
# aside: it needs a CPU with bf16 units, and is a lever dit-tune tries where there is one)
HAND_PICKED = {
    "fora:3": ("ddim", 50, None, "fora:3"),
    "fora:4": ("ddim", 50, None, "fora:4"),
    "forecast:3:2": ("ddim", 50, None, "forecast:3:2"),
    "interval 0:600": ("ddim", 50, (0, 600), None),
    "0:600 + fora:3": ("ddim", 50, (0, 600), "fora:3"),
    "DPM++ 20 + fora:2": ("dpm++", 20, None, "fora:2"),
}


def exact_of(profile, found):
    """(exact's Setting, its engine) from the profile's exact point and the engines found beside it."""
    from runtime.tuning.space import Setting

    point = profile.point("exact")
    engine = next((engine for engine in found.engines if (engine.graph, engine.backend, dict(engine.load)) ==
                   (point.graph, point.backend, point.load)), None)
    if engine is None:
        raise DiTError(f"{profile.path.name}'s exact point ({point.graph} on {point.backend}) does not run here; "
                       f"re-tune with dit-tune")
    return Setting(engine, point.request["sampler"], point.request["steps"]), engine


def run(profile_path: Path, work_dir: Path | None, echo=print) -> dict:
    """The hand-picked settings' rows (fidelity against exact, seconds per image) and the profile's record."""
    from runtime.profile import read_profile
    from runtime.tuning.space import engines_beside
    from runtime.tuning.tuner import Options, Store, Tuner

    profile = read_profile(profile_path)
    record, graph = profile.record, profile.graph_path(profile.point("exact"))
    found = engines_beside(graph)
    exact, engine = exact_of(profile, found)
    tuned = record["tuned_at"]
    options = Options(tuned["seed"], tuned["cfg_scale"], tuned["batch"], tuned["threads"])
    folder = work_dir or profile_path.with_name(profile_path.name.removesuffix(".json") + ".tune")
    tuner = Tuner(graph, options, Store(folder, options.conditions(graph.parent, found.engines), echo), echo)
    n, rows = record["pairs"]["confirm"], []
    exact_seconds = record["points"]["exact"]["seconds_per_image"]
    try:
        for name, (sampler, steps, interval, cache) in HAND_PICKED.items():
            if cache is not None and not engine.cached_steps:
                echo(f"{name}: skipped, {engine.graph} has no cached-steps pair (dit-export --cached-steps)")
                continue
            setting = exact.with_steps(sampler, steps).with_interval(interval).with_cache(cache)
            fidelity = tuner.fidelity(setting, exact, n)
            seconds = tuner.seconds_per_image(setting)
            rows.append({"name": name, "label": setting.label(), "settings": setting.request,
                         "seconds_per_image": seconds, "speedup": exact_seconds / seconds, "fidelity": fidelity})
            echo(f"{name}: {setting.label()}, {seconds:.4f} s/image, {fidelity['psnr']['mean']:.1f} dB")
    finally:
        tuner.close()
    return {"profile": str(profile_path), "machine": record["machine"], "pairs": n, "rows": rows}, record


def table(rows: list[dict]) -> str:
    from runtime.tuning.report import interval_text

    lines = ["| hand-picked | settings | s/image | speed-up | PSNR dB [95%] (p10) |", "|---|---|---|---|---|"]
    lines += [f"| {row['name']} | {row['label']} | {row['seconds_per_image']:.4f} | {row['speedup']:.2f}x | "
              f"{interval_text(row['fidelity'], 'psnr')} |" for row in rows]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("profile_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--work-dir", type=click.Path(path_type=Path),
              help="The tuner's work folder (default: the profile's own, <profile>.tune beside it).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the rows as JSON.")
def main(profile_path, work_dir, json_path):
    """The README's former hand-picked settings against a dit-tune profile's exact pictures, marked on its
    frontier."""
    from runtime.tuning.report import plot_frontier

    try:
        result, record = run(profile_path, work_dir, lambda line: click.echo(line, err=True))
    except DiTError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    plot = profile_path.with_name(profile_path.name.removesuffix(".json") + ".hand-picked.png")
    if plot_frontier(record, plot, marked=result["rows"]):
        click.echo(f"wrote {plot}", err=True)
    if json_path:
        from dit_ref.files import write_text_atomic

        write_text_atomic(json_path, json.dumps(result, indent=1) + "\n")
    click.echo(table(result["rows"]))


if __name__ == "__main__":
    main()
