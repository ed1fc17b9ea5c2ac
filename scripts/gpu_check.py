"""The GPU path checked end to end on a Linux machine with an NVIDIA GPU (run by scripts/gpu-check.sh).

Stages, each logged under OUT (default gpu-check/) and reported with its time and outcome:
  machine     nvidia-smi: driver, GPUs, the CUDA the driver supports; without them it stops at once
  setup       scripts/setup-env.sh with EXTRAS=dev,FLAVOUR (FLAVOUR, else chosen from the driver)
  stack       python -m dit_ref.machine.gpu_stack describe: torch, CUDA, cuDNN, TensorRT, ONNX Runtime, nvidia-*
  tests       DIT_REQUIRE_GPU=1 pytest -m "gpu or trt": outcomes and measured errors (junit XML)
  engine      dit-export XL/2 at 256, random weights, FP16, --engine required: export and build
  throughput  benchmarks/throughput.py on XL/2: tensorrt, torch-fp16, torch-compile, onnxruntime-fp16
  overhead    benchmarks/sampler_overhead.py: the sampling loop's host work per step on CUDA (torch)
Then OUT/gpu-report.md and OUT/gpu-report.json with every figure and error, ready to paste into an
issue. Standard library only: it runs before .venv exists.

--no-install (a machine without network, torch preinstalled): no set-up; the Python it runs in
(PYTHON, default this one) with the checkout on PYTHONPATH; a stage whose packages that Python lacks
(TensorRT, onnxruntime-gpu, onnx, pytest, ...) is skipped with the reason; the torch CUDA paths
(float16/bfloat16 backends, torch.compile, noise on CUDA, the host overhead, the gpu tests that need
no TensorRT) and their throughput still run, each stage bounded so that the whole takes under 8
minutes on one GPU.
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = {"gpu-cu13": (580,), "gpu-cu12": (525, 60, 13)}  # oldest Linux driver per flavour (CUDA 13 / 12)
MODEL, IMAGE_SIZE = "XL/2", 256
BENCHMARKED = "tensorrt,torch-fp16,torch-compile,onnxruntime-fp16"  # throughput.py adds the torch baseline
TORCH_BENCHMARKED = "torch-fp16,torch-bf16,torch-compile"  # --no-install: what needs no TensorRT nor ONNX Runtime
# --no-install: what each stage imports (a stage whose modules do not import is skipped, saying which is missing),
# and how long it may run (the whole within 8 minutes on one GPU).
STAGE_MODULES = {"tests": ("pytest", "runtime.generate", "runtime.backends.torch_backend", "export.onnx_export"),
                 "torch-tests": ("pytest", "runtime.generate", "runtime.backends.torch_backend"),
                 "engine": ("tensorrt", "onnx", "onnxscript", "export.pipeline"),
                 "throughput": ("click", "benchmarks.throughput", "benchmarks.measure", "runtime.backends.torch_backend"),
                 "overhead": ("click", "benchmarks.sampler_overhead")}
STAGE_SECONDS = {"tests": 150, "engine": 120, "throughput": 210, "overhead": 45}


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def probe_machine(nvidia_smi: str = "nvidia-smi") -> tuple[dict, str | None]:
    """(what nvidia-smi says, None) or (what is known, why this machine cannot run the GPU path)."""
    machine = {"system": platform.system(), "machine": platform.machine(), "host": platform.node(), "gpus": []}
    if machine["system"] != "Linux":
        return machine, f"this is {machine['system']}, not Linux: the GPU path needs Linux with an NVIDIA GPU and driver"
    if shutil.which(nvidia_smi) is None:
        return machine, (f"{nvidia_smi} not found: no NVIDIA driver on this machine (the GPU path needs an NVIDIA GPU "
                         "and its driver)")
    query = [nvidia_smi, "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return machine, f"{nvidia_smi} did not run ({error})"
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip().splitlines() or [f"exit code {done.returncode}"]
        return machine, f"{nvidia_smi} failed: {said[0]}"
    for line in done.stdout.strip().splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) >= 4:
            machine["gpus"].append({"name": fields[0], "driver": fields[1], "memory_mib": fields[2],
                                    "compute_capability": fields[3]})
    if not machine["gpus"]:
        return machine, f"{nvidia_smi} lists no GPU"
    machine["driver"] = machine["gpus"][0]["driver"]
    header = subprocess.run([nvidia_smi], capture_output=True, text=True, timeout=60).stdout
    found = re.search(r"CUDA Version:\s*([\d.]+)", header)
    machine["driver_cuda"] = found.group(1) if found else None  # the newest CUDA this driver runs
    return machine, None


def choose_flavour(driver: str, requested: str = "auto") -> tuple[str | None, str | None]:
    """(flavour, None) for the driver, or (None, why not): gpu-cu13 from driver 580, gpu-cu12 from 525.60.13."""
    have = version_tuple(driver)
    if requested not in ("", "auto"):
        if requested not in DRIVERS:
            return None, f"FLAVOUR={requested} is not a flavour; choose {' or '.join(DRIVERS)}"
        if have < DRIVERS[requested]:
            needed = ".".join(map(str, DRIVERS[requested]))
            return None, f"driver {driver} is older than {needed}, which {requested} needs; update the driver"
        return requested, None
    for flavour, oldest in DRIVERS.items():
        if have >= oldest:
            return flavour, None
    return None, f"driver {driver} is older than 525.60.13, the oldest any flavour runs on (CUDA 12); update it"


def last_line(log: Path) -> str:
    """The last line of a log that says something (an error line if there is one)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    errors = [line for line in lines if re.match(r"(error|setup-env|gpu-cu1\d|E |FAILED|ERROR)", line)]
    return ((errors or lines or ["no output"])[-1])[:400]


def run_stage(report: dict, name: str, command: list[str], out: Path, env: dict | None = None,
              seconds: float | None = None) -> bool:
    """Run one stage with its output in OUT/<name>.log (killed after `seconds`, when given); record its outcome
    and time; True when it passed."""
    log = out / f"{name}.log"
    print(f"gpu-check: {name}: {' '.join(command)} (log: {log})", flush=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        try:
            code = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})}, timeout=seconds).returncode
        except subprocess.TimeoutExpired:
            handle.write(f"\nerror: gpu-check stopped this stage after {seconds} s\n")
            code = 124
    stage = {"stage": name, "status": "passed" if code == 0 else "failed", "exit_code": code,
             "seconds": round(time.perf_counter() - start, 1), "command": " ".join(command), "log": log.name}
    if code != 0:
        stage["detail"] = last_line(log)
    report["stages"].append(stage)
    print(f"gpu-check: {name} {stage['status']} in {stage['seconds']} s", flush=True)
    return code == 0


def skip_stage(report: dict, name: str, reason: str) -> None:
    """Record a stage that cannot run in this environment, with the reason."""
    report["stages"].append({"stage": name, "status": "skipped", "detail": reason})
    print(f"gpu-check: {name} skipped: {reason}", flush=True)


def missing_module(python: str, modules: tuple[str, ...], env: dict) -> str | None:
    """Why these modules do not all import in `python` (one line), or None."""
    probe = "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)"
    done = subprocess.run([python, "-c", probe, *modules], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()] or [f"exit code {done.returncode}"]
    return f"this Python ({python}) cannot import what it needs: {lines[-1][:300]}"


def parse_junit(path: Path) -> list[dict]:
    """Each test of a pytest junit XML: name, outcome, seconds, message, recorded properties."""
    if not path.exists():
        return []
    tests = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                message = (element.get("message") or element.text or "").strip().splitlines()[0:1]
                message = message[0][:400] if message else None
                break
        properties = {prop.get("name"): _number(prop.get("value")) for prop in case.iter("property")}
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": message, "measured": properties})
    return tests


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def engine_figures(work: Path) -> dict | None:
    """The XL/2 engine's manifest record, sizes of its files."""
    stem = work / f"{MODEL.replace('/', '-')}-{IMAGE_SIZE}" / f"DiT-{MODEL.replace('/', '-')}-{IMAGE_SIZE}-fp16"
    manifest = stem.with_suffix(".json")
    if not manifest.exists():
        return None
    record = json.loads(manifest.read_text())
    sizes = {path.suffix: round(path.stat().st_size / 2**20, 1) for path in (stem.with_suffix(".onnx"),
                                                                          stem.with_suffix(".plan")) if path.exists()}
    return {"engine": record.get("engine"), "batch": record.get("batch"), "graph_mib": sizes.get(".onnx"),
            "plan_mib": sizes.get(".plan")}


def check(out: Path, flavour_wanted: str, nvidia_smi: str, install: bool = True) -> dict:
    """Every stage in order; stops after machine or setup failures (nothing else can run)."""
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": MODEL,
              "image_size": IMAGE_SIZE, "stages": [], "result": "passed", "mode": "install" if install else "no-install"}
    report["machine"], reason = probe_machine(nvidia_smi)
    if reason is None and install:
        report["flavour"], reason = choose_flavour(report["machine"]["driver"], flavour_wanted)
    for gpu in report["machine"]["gpus"]:
        print(f"gpu-check: {gpu['name']} (sm {gpu['compute_capability']}, {gpu['memory_mib']} MiB), driver "
              f"{gpu['driver']}, runs CUDA up to {report['machine'].get('driver_cuda')}", flush=True)
    if reason:
        report.update(result="stopped", reason=reason)
        report["stages"].append({"stage": "machine", "status": "stopped", "detail": reason})
        return report
    if install:
        python, env = str(ROOT / ".venv/bin/python"), {}
        if not run_stage(report, "setup", ["bash", "scripts/setup-env.sh"], out, {"EXTRAS": f"dev,{report['flavour']}"}):
            report.update(result="stopped", reason=f"setup failed: {report['stages'][-1]['detail']}")
            return report
    else:
        python = os.environ.get("PYTHON") or sys.executable
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        report["flavour"] = "as installed (--no-install)"
    run_all(report, python, env, out, install)
    failed = [stage["stage"] for stage in report["stages"] if stage["status"] not in ("passed", "skipped")]
    if failed:
        report.update(result="failed", reason=f"failed: {', '.join(failed)}")
    return report


def run_all(report: dict, python: str, env: dict, out: Path, install: bool) -> None:
    """stack, tests, engine, throughput and overhead; without install each only where its packages import."""
    def can_run(stage: str) -> bool:
        reason = None if install else missing_module(python, STAGE_MODULES[stage], env)
        if reason:
            skip_stage(report, stage.removeprefix("torch-"), reason)
        return reason is None

    bounded = {} if install else STAGE_SECONDS
    if run_stage(report, "stack", [python, "-m", "dit_ref.machine.gpu_stack", "describe", str(out / "stack.json")], out,
                 env):
        report["stack"] = stack = json.loads((out / "stack.json").read_text())
        print(f"gpu-check: {report['flavour']}: torch {stack['torch']} (CUDA {stack['torch_cuda']}), TensorRT "
              f"{stack['tensorrt']}, ONNX Runtime {(stack.get('onnxruntime') or {}).get('version')}; packages in "
              f"{out / 'stack.json'}", flush=True)
    lacks = (report.get("stack") or {}).get("missing", {}) if not install else {}
    tensorrt = install or not lacks.get("tensorrt")
    onnxruntime_cuda = install or not lacks.get("onnxruntime_cuda")
    junit = out / "gpu-tests.xml"
    markers = " and ".join(["(gpu or trt)"] + [f"not {marker}" for marker, here in
                                               (("trt", tensorrt), ("onnxruntime_cuda", onnxruntime_cuda)) if not here])
    if can_run("tests" if tensorrt or onnxruntime_cuda else "torch-tests"):
        run_stage(report, "tests", [python, "-m", "pytest", "-m", markers, "-rs", "-s", "-p", "no:cacheprovider",
                                    f"--junitxml={junit}"], out, {**env, "DIT_REQUIRE_GPU": "1"}, bounded.get("tests"))
    report["tests"] = parse_junit(junit)
    work = out / "work"
    graph_dir = work / f"{MODEL.replace('/', '-')}-{IMAGE_SIZE}"  # where throughput.py looks for it
    batches = os.environ.get("BATCHES", "1,8")
    largest = max(int(batch) for batch in batches.split(","))  # the profile the benchmark needs, no larger
    if not tensorrt:
        skip_stage(report, "engine", lacks["tensorrt"])
    elif can_run("engine"):
        run_stage(report, "engine", [python, "-m", "export.cli", "--model", MODEL, "--image-size", str(IMAGE_SIZE),
                                     "--random-init", "0", "--fp16", "--out", str(graph_dir), "--batch",
                                     f"1:{largest}:{largest}", "--engine", "required"], out, env, bounded.get("engine"))
    report["engine"] = engine_figures(work)
    chosen = BENCHMARKED if install else ",".join(
        [TORCH_BENCHMARKED] + (["tensorrt"] if report["engine"] else []) + (["onnxruntime-fp16"] if onnxruntime_cuda
                                                                              and report["engine"] else []))
    throughput = out / "throughput.json"
    if can_run("throughput"):
        run_stage(report, "throughput", [python, "benchmarks/throughput.py", "--model", MODEL, "--image-size",
                                         str(IMAGE_SIZE), "--batch", batches, "--backends", chosen, "--steps", "20",
                                         "--work-dir", str(work), "--json", str(throughput)], out, env,
                  bounded.get("throughput"))
    report["throughput"] = json.loads(throughput.read_text()) if throughput.exists() else []
    if can_run("overhead"):
        run_stage(report, "overhead", [python, "benchmarks/sampler_overhead.py", "--model", "S/2", "--batch", batches,
                                       "--steps", "10", "--backends", "torch"], out, env, bounded.get("overhead"))


def main() -> int:
    out = Path(os.environ.get("OUT", "gpu-check")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    install = "--no-install" not in sys.argv[1:] and os.environ.get("NO_INSTALL", "") in ("", "0")
    unknown = [argument for argument in sys.argv[1:] if argument != "--no-install"]
    if unknown:
        print(f"gpu-check: unknown argument {unknown[0]}; the one option is --no-install", file=sys.stderr)
        return 2
    report = check(out, os.environ.get("FLAVOUR", "auto"), os.environ.get("NVIDIA_SMI", "nvidia-smi"), install)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_report import markdown

    (out / "gpu-report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu-report.md").write_text(markdown(report))
    print(f"gpu-check: {report['result']}" + (f": {report['reason']}" if report.get("reason") else ""))
    print(f"gpu-check: wrote {out / 'gpu-report.md'} and {out / 'gpu-report.json'}")
    return 0 if report["result"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
