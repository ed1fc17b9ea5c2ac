"""The yardstick's paired columns: each row's pictures against those of the row the reference rule picks.

The rule (runtime.tuning.reference) compares a setting that changes precision, backend options, cache
policy or guidance interval with its plain self (FP32, uncached, every step guided: same sampler, steps
and cfg), and a plain setting of a deterministic sampler with the converged ODE solution; a plain DDPM row
has no paired reference. The reference is one of the run's rows where one fits (its own backend first),
else a setting of SETTINGS, else a new plain setting on the row's backend; rows the run lacks are added
and sampled before the rows that need them. The fashion model draws pixels, so the pairs compared are
its uint8 images (runtime.tuning.fidelity).
"""

from dataclasses import replace

from runtime.tuning.fidelity import LOW_PERCENTILE, PSNR_CEILING_DB, SSIM_OPTIONS

METHOD = {"pairs": "each sample against the reference row's sample of the same seed and label",
          "form": "uint8 images as dit-run writes them, data range 255", "psnr_ceiling_db": PSNR_CEILING_DB,
          "ssim": f"Wang et al. 2004 ({SSIM_OPTIONS})", "summary": f"mean over pairs with its 95% percentile "
          f"bootstrap interval, and the {LOW_PERCENTILE}th percentile", "rule": "runtime.tuning.reference"}
ORDINARY_OPTIONS = {"batch_size"}  # generate() options that leave the trajectory as it is (rounding aside)


def is_plain(setting) -> bool:
    """FP32, no backend option, uncached, every step guided: the setting follows its sampler's trajectory."""
    return setting.precision == "fp32" and not setting.load_options and set(setting.options) <= ORDINARY_OPTIONS


def reference_setting(setting, run: list, known: list, converged="auto"):
    """(the setting setting is compared with, the kind of reference) or None: one of run's settings (its own
    backend first), one of known, or a new plain one on its backend. converged: a plain row's (sampler, steps),
    "auto" the rule's own (runtime.tuning.reference.CONVERGED), None: a plain row has none."""
    from runtime.sampling import sampler_from_name
    from runtime.tuning.reference import reference_for

    if converged is None and is_plain(setting):
        return None
    reference = reference_for(sampler_from_name(setting.sampler, setting.steps), is_plain(setting),
                              None if converged == "auto" else converged)
    if reference is None:
        return None
    wanted = (reference.sampler, reference.steps, setting.cfg_scale)
    fitting = [other for other in [*run, *known] if is_plain(other) and (other.sampler, other.steps,
                                                                         other.cfg_scale) == wanted]
    fitting.sort(key=lambda other: (other not in run, other.backend != setting.backend))  # stable: run's order
    if fitting:
        return fitting[0], reference.kind
    cfg = "" if setting.cfg_scale == 4.0 else f"-cfg{setting.cfg_scale:g}"
    new = replace(setting, name=f"{setting.backend}-{reference.sampler}{reference.steps}{cfg}", precision="fp32",
                  sampler=reference.sampler, steps=reference.steps, load_options={}, options={})
    return new, reference.kind


def with_references(settings: list, known: list, converged="auto") -> tuple[list, dict]:
    """(settings with the references they lack added, each reference before the rows that need it;
    {name: (reference name, kind)} of every row that has one)."""
    ordered, references = list(settings), {}
    for setting in ordered:  # grows while it runs: an added plain reference needs the converged one
        found = reference_setting(setting, ordered, known, converged)
        if found is not None:
            reference, kind = found
            if reference not in ordered:
                ordered.append(reference)
            references[setting.name] = (reference.name, kind)

    def depth(name: str) -> int:
        return 0 if name not in references else 1 + depth(references[name][0])

    return sorted(ordered, key=lambda setting: depth(setting.name)), references


def paired_scores(images: dict, name: str, references: dict, resamples: int, seed: int) -> dict | None:
    """The paired fidelity of row name's uint8 images against its reference's (None for a row without one)."""
    from runtime.tuning.fidelity import image_pairs, summarise

    if name not in references:
        return None
    reference, kind = references[name]
    return {"reference": reference, "kind": kind, **summarise(image_pairs(images[name], images[reference]),
                                                              resamples, seed)}


def paired_cells(row: dict) -> list[str]:
    """The table's three paired cells: the reference, "PSNR [95%], p10" in dB and "SSIM [95%], p10"; "-" without."""
    paired = row.get("paired")
    if not paired:
        return ["-", "-", "-"]

    def cell(summary: dict, digits: int) -> str:
        low, high = summary["interval"]
        return (f"{summary['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}], "
                f"{summary[f'p{LOW_PERCENTILE}']:.{digits}f}")

    return [paired["reference"], cell(paired["psnr"], 1), cell(paired["ssim"], 3)]
