"""gpu-report.md from the report scripts/gpu_check.py collects: tables ready to paste into an issue.

Standard library only (it also runs when the check stopped before .venv existed).
"""

# The GPU tests' limits that were guesses when written; the report shows what the GPU measured.
TO_BE_MEASURED = [
    ("FP32 engine vs torch and ONNX Runtime", "test_engine_matches_reference_and_onnxruntime[fp32",
     ("error_vs_torch", "error_vs_onnxruntime"), "1e-4 (max abs error / max abs reference)"),
    ("FP16 engine vs torch and ONNX Runtime", "test_engine_matches_reference_and_onnxruntime[fp16",
     ("error_vs_torch", "error_vs_onnxruntime"), "1e-2"),
    ("CUDA-graph replay vs eager", "test_cuda_graph_replay_equals_eager_bitwise", ("max_abs_difference",),
     "0 (bitwise)"),
    ("torch CUDA graphs (reduce-overhead) float16 vs float32", "test_cuda_graphs_with_guided_rows_against_float32",
     ("cuda_graphs_float16_vs_float32",), "1e-2"),
    ("torch CUDA graphs (reduce-overhead) bfloat16 vs float32", "test_cuda_graphs_with_guided_rows_against_float32",
     ("cuda_graphs_bfloat16_vs_float32",), "3e-2"),
    ("torch cached steps under CUDA graphs vs float32", "test_cached_steps_under_cuda_graphs_against_eager",
     ("cached_steps_cuda_graphs_vs_float32",), "1e-2"),
]


def table(header: list[str], rows: list[list]) -> list[str]:
    cells = [[str(cell) if cell is not None else "-" for cell in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in cells]


def number(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def machine_section(report: dict) -> list[str]:
    machine = report.get("machine", {})
    lines = ["## Machine", "", f"{machine.get('host', '?')}, {machine.get('system', '?')} {machine.get('machine', '')}; "
             f"NVIDIA driver {machine.get('driver', '-')} (runs CUDA up to {machine.get('driver_cuda') or '-'}); "
             f"flavour {report.get('flavour') or '-'}", ""]
    gpus = machine.get("gpus", [])
    if gpus:
        lines += table(["GPU", "compute capability", "memory MiB"],
                       [[gpu["name"], gpu["compute_capability"], gpu["memory_mib"]] for gpu in gpus]) + [""]
    return lines


def stack_section(report: dict) -> list[str]:
    stack = report.get("stack")
    if not stack:
        return []
    lines = ["## Stack", "", f"Python {stack['python']}, torch {stack['torch']} (CUDA {stack['torch_cuda']}, cuDNN "
             f"{stack['cudnn']}), TensorRT {stack.get('tensorrt') or '-'}, ONNX Runtime "
             f"{(stack.get('onnxruntime') or {}).get('version', '-')} (CUDA "
             f"{(stack.get('onnxruntime') or {}).get('cuda_version') or '-'})", ""]
    lines += table(["package", "version"], sorted(stack.get("packages", {}).items())) + [""]
    missing = {name: reason for name, reason in stack.get("missing", {}).items() if reason}
    lines += [f"- missing {name}: {reason}" for name, reason in missing.items()]
    return lines + ([""] if missing else [])


def stages_section(report: dict) -> list[str]:
    rows = [[stage["stage"], stage["status"], stage.get("seconds"), stage.get("limit_s"), stage.get("detail", "")]
            for stage in report.get("stages", [])]
    return ["## Stages", ""] + table(["stage", "status", "seconds", "limit s", "detail"], rows) + [""]


def not_checked_section(report: dict) -> list[str]:
    gaps = report.get("not_checked") or []
    if not gaps:
        return []
    return ["## Not checked", ""] + [f"- {gap['what']}: {gap['why']}" for gap in gaps] + [""]


def tests_section(report: dict) -> list[str]:
    tests = report.get("tests") or []
    if not tests:
        return []
    counts = {}
    for test in tests:
        counts[test["outcome"]] = counts.get(test["outcome"], 0) + 1
    summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))
    rows = [[test["test"].split("::", 1)[-1], test["outcome"], number(test["seconds"]),
             ", ".join(f"{name} {number(value)}" for name, value in test["measured"].items()), test["message"] or ""]
            for test in tests]
    required = report.get("require_gpu", "1")
    lines = [f"## GPU tests (DIT_REQUIRE_GPU={required} pytest -m \"gpu or trt\")", "", summary, ""]
    lines += table(["test", "outcome", "s", "measured", "message"], rows) + [""]
    lines += ["### Tolerances to be measured on first GPU run", ""]
    measured = []
    for what, prefix, keys, limit in TO_BE_MEASURED:
        values = [test["measured"].get(key) for test in tests if prefix in test["test"] for key in keys]
        values = [value for value in values if isinstance(value, float)]
        measured.append([what, limit, number(max(values)) if values else "not measured"])
    return lines + table(["check", "limit in the test", "largest measured"], measured) + [""]


def engine_section(report: dict) -> list[str]:
    figures = report.get("engine")
    if not figures or not figures.get("engine"):
        return []
    engine = figures["engine"]
    export = next((stage for stage in report["stages"] if stage["stage"] == "engine"), {})
    return [f"## {figures.get('model') or report['model']} at {report['image_size']}, FP16 engine (random weights)", "",
            f"dit-export with the build: {export.get('seconds')} s in all; TensorRT {engine['tensorrt']} build "
            f"{engine['build_seconds']} s at optimization level {engine['optimization_level']} on {engine['gpu']} "
            f"(sm {engine['compute_capability']}); graph {figures['graph_mib']} MiB, plan {figures['plan_mib']} MiB, "
            f"batch {figures['batch']}", ""]


def compare_section(report: dict) -> list[str]:
    compare = report.get("compare")
    if not compare:
        return []
    errors = ", ".join(f"{name} {number(value)}" for name, value in compare["errors"].items())
    inputs = ", ".join(f"batch {item['batch']} ({item['guided']} guided)" for item in compare["inputs"])
    return ["## Engine vs ONNX Runtime (Polygraphy's Comparator, export.compare_engine)", "",
            f"{compare['plan']} in TrtRunner against ONNX Runtime (CPU) on {compare['graph']}, {inputs}: max abs error / "
            f"max abs reference {errors}; limit {number(compare['tolerance'])}: "
            f"{'passed' if compare['passed'] else 'FAILED'}", ""]


def throughput_section(report: dict) -> list[str]:
    records = report.get("throughput") or []
    if not records:
        return []
    measured = [r for r in records if "skipped" not in r]
    rows = [[r["backend"], r.get("model", report["model"]), r["batch"], number(r.get("ms_per_step_median")),
             number(r.get("ms_per_step_p90")), number(r.get("images_per_s")), number(r.get("ratio_vs_torch")),
             number(r.get("tflops")), number(r.get("percent_of_peak")), number(r.get("peak_mem_mb"))] for r in measured]
    lines = [f"## Throughput ({report['image_size']} px, benchmarks/throughput.py; vs torch: eager float32 of the "
             "same model and batch)", ""]
    lines += table(["backend", "model", "batch", "ms/step median", "p90", "images/s", "vs torch", "TFLOP/s",
                    "% FP16 peak", "peak MB"], rows) + [""]
    skipped = sorted({(r["backend"], r.get("model", report["model"]), r["skipped"]) for r in records if "skipped" in r})
    return lines + [f"- {backend} ({model}) not measured: {reason}" for backend, model, reason in skipped] + [""]


def markdown(report: dict) -> str:
    """The whole report as Markdown."""
    result = report["result"].upper() + (f": {report['reason']}" if report.get("reason") else "")
    lines = [f"# dit-deploy GPU check, {report['date']}", "", f"**Result: {result}**", ""]
    for section in (machine_section, stack_section, stages_section, not_checked_section, tests_section,
                    engine_section, compare_section, throughput_section):
        lines += section(report)
    lines += ["Every figure and error is also in gpu-report.json; each stage's output is in its .log beside it."]
    return "\n".join(lines) + "\n"
