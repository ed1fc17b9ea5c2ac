"""What a gpu-check run covers, how long each stage may take, and what its result is: pure decisions that
scripts/gpu_check.py acts on (tests/install/test_gpu_check.py checks them on a CPU). Standard library only.

A run passes only when it checked everything: TensorRT missing, ONNX Runtime's CUDA provider missing, a
stage skipped or a GPU test skipped each make it "partial", naming what was not checked (an exit code of 0,
or 1 with --require-all); a stage that failed makes it "failed".
"""

# --no-install bounds each stage so that a node with only torch's CUDA build is done within 8 minutes.
BUDGET_SECONDS = 480
# Measured on a 2-core CPU (docs/gpu.md): dit-export S/2 at 256 as FP16 with its ONNX Runtime
# check, 43 s wall; export.compare_engine's ONNX Runtime half on that graph (batch 1 and 8, both guided subsets), 15 s.
EXPORT_S2_SECONDS = 45
COMPARE_ORT_S2_SECONDS = 15
# Estimated (docs/gpu.md): a TensorRT build of S/2 from an empty timing cache, taken as 60 s at level 3 and 30 s
# at level 1; gpu-check's report records the real ones (the engine's build_seconds, each stage's seconds).
BUILD_S2_SECONDS = {3: 60, 1: 30}
MARGIN = 2  # on the measured figures: a GPU node's CPU may be slower, a first import is
SMOKE_LEVEL = 1  # --no-install builds S/2 at this optimization level: a real engine, quickly
# The torch CUDA paths (estimates, docs/gpu.md): the tests compile S/2 five times (default, reduce-overhead at two
# shapes, the cached-steps pair); throughput runs 4 settings x 2 batches of XL/2 in fresh processes (about 15 s
# each eager, up to WORKER_SECONDS compiled). Their sum, with the module probes, stays under BUDGET_SECONDS.
TORCH_LIMITS = {"stack": 30, "tests": 170, "throughput": 200, "overhead": 40}
PROBES_SECONDS = 30  # gpu-check's own import probes, one per stage
WORKER_SECONDS = 90  # one throughput row (a fresh process, torch.compile included) at most, under --no-install
THROUGHPUT_SLACK = 20  # of the throughput stage's limit, for its start and the JSON: the rest is its --time-budget

ENGINE_MODEL = {True: ("XL/2", 3), False: ("S/2", SMOKE_LEVEL)}  # install?: (model, optimization level)
BENCHMARKED = ("tensorrt,torch-fp16,torch-bf16,torch-compile-fp16,torch-cudagraphs-fp16,torch-cudagraphs-bf16,"
               "torch-cudagraphs-fp16-fora3,onnxruntime-fp16")  # throughput.py adds the torch baseline
TORCH_BENCHMARKED = "torch-fp16,torch-bf16,torch-cudagraphs-fp16"  # what --no-install measures on XL/2 in budget
ENGINE_BENCHMARKED = "tensorrt,torch-cudagraphs-fp16"  # --no-install with TensorRT: beside its S/2 engine
MARKERS = {"trt": "tensorrt", "onnxruntime_cuda": "onnxruntime_cuda"}  # test marker -> what stack.missing names


def stage_limits(install: bool, tensorrt: bool, scale: float = 1.0) -> dict[str, float]:
    """Seconds each stage may run (an empty dict: no bounds, as when gpu-check installs the stack). With TensorRT
    the tests also export and build (S/2 FP32 and FP16, and the decoder's engines), and the engine, compare and
    engine-throughput stages run; those are beyond the torch-only 8 minutes."""
    if install:
        return {}
    limits = dict(TORCH_LIMITS)
    if tensorrt:
        build = BUILD_S2_SECONDS[3]
        limits["tests"] += MARGIN * (2 * EXPORT_S2_SECONDS + 4 * build)
        limits["engine"] = MARGIN * EXPORT_S2_SECONDS + BUILD_S2_SECONDS[SMOKE_LEVEL] * MARGIN
        limits["compare"] = MARGIN * (COMPARE_ORT_S2_SECONDS + 15)  # + torch and TensorRT start, the engine's load
        limits["engine-throughput"] = 150
    return {stage: round(seconds * scale) for stage, seconds in limits.items()}


def required_markers(install: bool, missing: dict) -> str:
    """DIT_REQUIRE_GPU for the GPU tests: every marker when the stack was installed ("1"), else the CUDA device and
    whatever this environment has; tests needing what it lacks skip with their reason (and the run is partial)."""
    if install:
        return "1"
    return ",".join(["gpu"] + [marker for marker, key in MARKERS.items() if not missing.get(key)])


def throughput_backends(install: bool, onnxruntime_cuda: bool) -> str:
    """The settings the XL/2 throughput stage measures (without install: the torch ones that fit the budget)."""
    if install:
        return BENCHMARKED
    return TORCH_BENCHMARKED + (",onnxruntime-fp16" if onnxruntime_cuda else "")


def not_checked(report: dict) -> list[tuple[str, str]]:
    """What this run did not check, as (what, why): TensorRT or ONNX Runtime's CUDA provider missing, each skipped
    stage, the skipped GPU tests and the throughput rows not measured (with the first one's reason)."""
    missing = (report.get("stack") or {}).get("missing") or {}
    gaps = [(f"{name} not checked", missing[key]) for name, key in
            (("TensorRT", "tensorrt"), ("ONNX Runtime's CUDA provider", "onnxruntime_cuda")) if missing.get(key)]
    gaps += [(f"stage {stage['stage']} skipped", stage.get("detail")) for stage in report.get("stages", [])
             if stage["status"] == "skipped"]
    skipped = [test for test in report.get("tests") or [] if test["outcome"] == "skipped"]
    if skipped:
        gaps.append((f"{len(skipped)} GPU tests skipped", f"first {skipped[0]['test']}: {skipped[0]['message']}"))
    rows = [row for row in report.get("throughput") or [] if "skipped" in row]
    if rows:
        gaps.append((f"{len(rows)} throughput rows not measured",
                     f"first {rows[0]['backend']} {rows[0].get('model', '')} batch {rows[0]['batch']}: {rows[0]['skipped']}"))
    return gaps


def verdict(report: dict) -> tuple[str, str | None]:
    """(result, reason): "stopped" and "failed" as the stages say, else "partial" with what was not checked, else
    "passed"."""
    if report.get("result") == "stopped":
        return "stopped", report.get("reason")
    failed = [stage["stage"] for stage in report.get("stages", []) if stage["status"] == "failed"]
    if failed:
        return "failed", f"failed: {', '.join(failed)}"
    gaps = not_checked(report)
    return ("partial", "; ".join(what for what, _ in gaps)) if gaps else ("passed", None)


def exit_code(result: str, require_all: bool) -> int:
    """0 when passed, or partial without --require-all; 1 otherwise."""
    return 0 if result == "passed" or (result == "partial" and not require_all) else 1
