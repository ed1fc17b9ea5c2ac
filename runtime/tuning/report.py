"""A profile told: the table of its named points and the plot of its frontier (seconds per image against paired
fidelity to the exact point's pictures, every measured setting, the front and the named points marked)."""

from pathlib import Path

from runtime.tuning.search import pareto_front

MEASURED_NOTE = "s/image: wall time on this machine in this run; PSNR against the exact point's pictures, same seeds"


def interval_text(summary: dict | None, metric: str, scale: float = 1.0, digits: int = 1) -> str:
    """"43.7 [42.9, 44.4] (p10 37.8)" of a fidelity metric, or "exact"."""
    if summary is None:
        return "exact"
    found = summary[metric]
    low, high = (scale * bound for bound in found["interval"])
    return (f"{scale * found['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] "
            f"(p10 {scale * found['p10']:.{digits}f})")


def quality_text(quality: dict | None) -> str:
    if not quality:
        return "-"
    low, high = (100 * bound for bound in quality["class_accuracy_interval"])
    distance_low, distance_high = quality["frechet_distance_interval"]
    return (f"{100 * quality['class_accuracy']:.1f}% [{low:.1f}, {high:.1f}], FD {quality['frechet_distance']:.1f} "
            f"[{distance_low:.1f}, {distance_high:.1f}]")


def points_table(record: dict) -> str:
    """A Markdown table of the profile's named points."""
    lines = ["| point | settings | s/image | speed-up | PSNR dB [95%] (p10) | SSIM [95%] | quality |",
             "|---|---|---|---|---|---|---|"]
    for name, point in record["points"].items():
        seconds, gain = point.get("seconds_per_image"), point.get("speedup")
        lines.append(f"| {name} | {point['label']} | {seconds:.4f} | {gain:.2f}x | "
                     f"{interval_text(point['fidelity'], 'psnr')} | {interval_text(point['fidelity'], 'ssim', digits=3)} "
                     f"| {quality_text(point.get('quality'))} |")
    missing = record.get("not_found") or []
    notes = [f"not found within the budget: {', '.join(missing)}"] if missing else []
    return "\n".join(lines + notes + [f"{record['machine']['cpu']}; {MEASURED_NOTE}."])


def plot_frontier(record: dict, path: Path, marked: list[dict] = ()) -> bool:
    """The frontier plot (PNG, written atomically); False when matplotlib is not installed. marked: other settings
    drawn by name ({"name", "seconds_per_image", "fidelity"}: e.g. benchmarks/hand_picked.py's)."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        return False
    matplotlib.use("Agg")
    from matplotlib import pyplot

    from dit_ref.files import atomic_path

    rows = [row for row in record["frontier"] if row["fidelity"] is not None]
    seconds = [row["seconds_per_image"] or row["predicted_seconds_per_image"] for row in rows]
    psnr = [row["fidelity"]["psnr"]["mean"] for row in rows]
    front = pareto_front(seconds, psnr) if rows else []
    figure, axes = pyplot.subplots(figsize=(9, 6))
    for x, y, on_front, row in zip(seconds, psnr, front, rows):
        measured = row["seconds_per_image"] is not None
        axes.plot(x, y, "o" if measured else "x", color="tab:blue" if on_front else "tab:gray", markersize=4)
    for name, point in record["points"].items():
        y = 100.0 if point["fidelity"] is None else point["fidelity"]["psnr"]["mean"]
        axes.plot(point["seconds_per_image"], y, "*", color="tab:red", markersize=12)
        axes.annotate(f"{name}: {point['label']}", (point["seconds_per_image"], y), xytext=(6, 4),
                      textcoords="offset points", fontsize=8)
    for row in marked:
        y = row["fidelity"]["psnr"]["mean"]
        axes.plot(row["seconds_per_image"], y, "D", color="tab:orange", markersize=6)
        axes.annotate(row["name"], (row["seconds_per_image"], y), xytext=(6, -10), textcoords="offset points",
                      fontsize=8, color="tab:orange")
    budget = record["budgets"]["faithful_db"]
    lowest = psnr + [row["fidelity"]["psnr"]["mean"] for row in marked]
    axes.axhline(budget, color="tab:green", linewidth=0.8, linestyle="--", label=f"faithful budget {budget:g} dB")
    axes.set(xscale="log", xlabel="seconds per image (this machine; x: predicted)", ylabel="mean paired PSNR (dB)",
             title=f"{record['model']} {record['image_size']}px: speed against fidelity to exact's pictures\n"
                   f"{record['machine']['cpu']}", ylim=(max(0.0, min(lowest, default=10) - 3), 102))
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    with atomic_path(path, suffix=".tmp.png") as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")
    pyplot.close(figure)
    return True
