"""The speed-quality frontier of a yardstick run (benchmarks/quality.py): the Pareto front and its plot."""

from pathlib import Path

from runtime.tuning.search import pareto_front  # noqa: F401 (the one definition; part of this module's API)

# (row key, axis label, higher is better, scale for the axis)
METRICS = (("class_accuracy", "class accuracy (%)", True, 100.0),
           ("frechet_distance", "Fréchet distance to the test set (lower is better)", False, 1.0),
           ("paired_psnr", "paired PSNR (dB) against the row's reference", True, 1.0))


def estimate(row: dict, key: str) -> tuple[float, tuple[float, float]] | None:
    """(estimate, 95% interval) of a row's metric; None where it has none (a paired one without a reference)."""
    if key == "paired_psnr":
        paired = row.get("paired")
        return (paired["psnr"]["mean"], tuple(paired["psnr"]["interval"])) if paired else None
    return row[key], tuple(row[f"{key}_interval"])


def plain_tick(value: float, _position=None) -> str:
    """A log axis's tick as a plain number (0.05, not 5 x 10^-2); of the minor ones only 2s and 5s."""
    leading = f"{value:.0e}"[0]
    return f"{value:g}" if leading in "125" else ""


MARKERS = {"ddpm": "s", "ddim": "o", "dpm++": "^"}  # by sampler; another sampler: a diamond


def draw_panel(axes, rows: list[dict], key: str, label: str, higher_is_better: bool, scale: float) -> None:
    """One metric against seconds per image: every setting that has it with its interval, numbered as in the key,
    and the front as a staircase."""
    numbered = [(k, row, found) for k, row in enumerate(rows) if (found := estimate(row, key)) is not None]
    x = [row["seconds_per_image"] for _, row, _ in numbered]
    y = [scale * value for _, _, (value, _) in numbered]
    low = [max(value - scale * bounds[0], 0.0) for value, (_, _, (_, bounds)) in zip(y, numbered)]
    high = [max(scale * bounds[1] - value, 0.0) for value, (_, _, (_, bounds)) in zip(y, numbered)]
    front = pareto_front(x, y, higher_is_better)
    for i, (k, row, _) in enumerate(numbered):
        color = "tab:blue" if front[i] else "tab:gray"
        axes.errorbar(x[i], y[i], yerr=[[low[i]], [high[i]]], fmt=MARKERS.get(row["sampler"], "D"), color=color,
                      capsize=3, markersize=5)
        axes.annotate(str(k + 1), (x[i], y[i]), xytext=(4, 2), textcoords="offset points", fontsize=7, color=color)
    on_front = sorted((x[i], y[i]) for i in range(len(numbered)) if front[i])
    axes.plot(*zip(*on_front), drawstyle="steps-post", color="tab:blue", linewidth=1, alpha=0.6, label="Pareto front")
    for sampler, marker in MARKERS.items():
        axes.plot([], [], marker, color="black", label=sampler)
    axes.set(xscale="log", xlabel="seconds per image (this machine)", ylabel=label)
    axes.margins(x=0.1)
    axes.xaxis.set_major_formatter(plain_tick)
    axes.xaxis.set_minor_formatter(plain_tick)
    axes.tick_params(axis="x", which="minor", labelsize=7)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="best")


def key_text(rows: list[dict]) -> str:
    """The numbered names of the settings, one per line, for the key beside the panels."""
    return "\n".join(f"{k + 1:>2}  {row['name']}" for k, row in enumerate(rows))


def plot_frontier(report: dict, path: Path) -> None:
    """s/image against class accuracy, the Fréchet distance and (where rows have one) the paired PSNR, one panel
    each, written atomically (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    from dit_ref.files import atomic_path

    rows = report["rows"]
    metrics = [metric for metric in METRICS if any(estimate(row, metric[0]) is not None for row in rows)]
    figure, panels = pyplot.subplots(1, len(metrics), figsize=(7.5 * len(metrics), 6.5), squeeze=False)
    figure.subplots_adjust(right=0.8)
    for axes, metric in zip(panels[0], metrics):
        draw_panel(axes, rows, *metric)
    n = rows[0]["n"] if rows else 0
    figure.suptitle(f"{report['model']} DiT: quality against speed, {n} samples per setting, 95% bootstrap intervals"
                    f"\n{report['machine']}, {report['date']}", fontsize=10)
    figure.text(0.5, 0.005, report["note"], ha="center", fontsize=8, style="italic")
    figure.text(0.81, 0.5, key_text(rows), va="center", fontsize=7, family="monospace")
    with atomic_path(path, suffix=".tmp.png") as temporary:
        figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    pyplot.close(figure)


def merge(reports: list[dict]) -> dict:
    """One report of several yardstick runs made one after another on one machine: their rows in order (each
    with its run's number), the first run's record otherwise. Refused when the runs differ in machine, model,
    samples per row or seed: their rows would not compare."""
    same = ("machine", "device", "threads", "model", "per_class", "seed", "versions")
    for report in reports[1:]:
        differing = [key for key in same if report.get(key) != reports[0].get(key)]
        if differing:
            raise ValueError(f"the runs differ in {', '.join(differing)}: their rows do not compare")
    rows = [{**row, "run": number} for number, report in enumerate(reports, 1) for row in report["rows"]]
    dates = sorted({report["date"] for report in reports})
    note = reports[0]["note"] if len(reports) == 1 else (
        f"{len(reports)} runs one after another on this machine, {', '.join(dates)}; s/image is wall time there: "
        "compare it between these rows only")
    return {**reports[0], "runs": len(reports), "note": note, "rows": rows}


def main(argv: list[str]) -> int:
    """python benchmarks/frontier.py RUN.json [RUN.json ...] --json OUT.json --plot OUT.png: the runs' rows as
    one frontier (benchmarks/quality.py writes each run's JSON)."""
    import argparse
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout
    from dit_ref.files import write_text_atomic

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="yardstick JSON records (quality.py --json)")
    parser.add_argument("--json", type=Path, help="write the merged record here")
    parser.add_argument("--plot", type=Path, help="draw the merged frontier here (PNG)")
    arguments = parser.parse_args(argv)
    try:
        report = merge([json.loads(path.read_text()) for path in arguments.runs])
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if arguments.json:
        write_text_atomic(arguments.json, json.dumps(report, indent=1) + "\n")
    if arguments.plot:
        plot_frontier(report, arguments.plot)
    print(f"{len(report['rows'])} rows from {report['runs']} runs")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
