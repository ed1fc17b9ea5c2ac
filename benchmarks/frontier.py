"""The speed-quality frontier of a yardstick run (benchmarks/quality.py): the Pareto front and its plot."""

from pathlib import Path

# (row key, axis label, higher is better, scale for the axis)
METRICS = (("class_accuracy", "class accuracy (%)", True, 100.0),
           ("frechet_distance", "Fréchet distance to the test set (lower is better)", False, 1.0))


def pareto_front(costs, qualities, higher_is_better: bool = True) -> list[bool]:
    """Per point: True when no other point is at least as cheap and at least as good, and better in one."""
    sign = 1.0 if higher_is_better else -1.0
    points = [(float(cost), sign * float(quality)) for cost, quality in zip(costs, qualities, strict=True)]

    def dominates(a, b) -> bool:
        return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])

    return [not any(dominates(other, point) for other in points) for point in points]


def plain_tick(value: float, _position=None) -> str:
    """A log axis's tick as a plain number (0.05, not 5 x 10^-2); of the minor ones only 2s and 5s."""
    leading = f"{value:.0e}"[0]
    return f"{value:g}" if leading in "125" else ""


def draw_panel(axes, rows: list[dict], key: str, label: str, higher_is_better: bool, scale: float) -> None:
    """One metric against seconds per image: every setting with its interval, named, and the front as a staircase."""
    x = [row["seconds_per_image"] for row in rows]
    y = [scale * row[key] for row in rows]
    low = [max(value - scale * row[f"{key}_interval"][0], 0.0) for value, row in zip(y, rows)]
    high = [max(scale * row[f"{key}_interval"][1] - value, 0.0) for value, row in zip(y, rows)]
    front = pareto_front(x, y, higher_is_better)
    for k, row in enumerate(rows):
        color = "tab:blue" if front[k] else "tab:gray"
        axes.errorbar(x[k], y[k], yerr=[[low[k]], [high[k]]], fmt="o", color=color, capsize=3, markersize=5)
        axes.annotate(row["name"], (x[k], y[k]), xytext=(5, 3), textcoords="offset points", fontsize=7, color=color)
    on_front = sorted((x[k], y[k]) for k in range(len(rows)) if front[k])
    axes.plot(*zip(*on_front), drawstyle="steps-post", color="tab:blue", linewidth=1, alpha=0.6, label="Pareto front")
    axes.set(xscale="log", xlabel="seconds per image (this run, this machine)", ylabel=label)
    axes.margins(x=0.25)  # room for the names of the slowest settings
    axes.xaxis.set_major_formatter(plain_tick)
    axes.xaxis.set_minor_formatter(plain_tick)
    axes.tick_params(axis="x", which="minor", labelsize=7)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="best")


def plot_frontier(report: dict, path: Path) -> None:
    """Two panels, s/image against class accuracy and against the Fréchet distance, written atomically (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    from dit_ref.files import atomic_path

    rows = report["rows"]
    figure, panels = pyplot.subplots(1, 2, figsize=(13, 5.5))
    for axes, metric in zip(panels, METRICS):
        draw_panel(axes, rows, *metric)
    n = rows[0]["n"] if rows else 0
    figure.suptitle(f"{report['model']} DiT: quality against speed, {n} samples per setting, 95% bootstrap intervals"
                    f"\n{report['machine']}, {report['date']}", fontsize=10)
    figure.text(0.5, 0.005, report["note"], ha="center", fontsize=8, style="italic")
    with atomic_path(path, suffix=".tmp.png") as temporary:
        figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    pyplot.close(figure)
