"""The GPU path checked end to end on a Linux machine with an NVIDIA GPU (run by scripts/gpu-check.sh).

Stages, each logged under OUT (default gpu-check/) and reported with its time and outcome:
  machine     nvidia-smi: driver, GPUs, the CUDA the driver supports; without them it stops at once
  setup       scripts/setup-env.sh with EXTRAS=dev,FLAVOUR (FLAVOUR, else chosen from the driver)
  stack       python -m runtime.gpu_stack describe: torch, CUDA, cuDNN, TensorRT, ONNX Runtime, nvidia-*
  tests       DIT_REQUIRE_GPU=1 pytest -m "gpu or trt": outcomes and measured errors (junit XML)
  engine      dit-export XL/2 at 256, random weights, FP16, --engine required: export and build
  throughput  benchmarks/throughput.py on XL/2: tensorrt, torch-fp16, torch-compile, onnxruntime-fp16
Then OUT/gpu-report.md and OUT/gpu-report.json with every figure and error, ready to paste into an
issue. Standard library only: it runs before .venv exists.
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


def run_stage(report: dict, name: str, command: list[str], out: Path, env: dict | None = None) -> bool:
    """Run one stage with its output in OUT/<name>.log; record its outcome and time; True when it passed."""
    log = out / f"{name}.log"
    print(f"gpu-check: {name}: {' '.join(command)} (log: {log})", flush=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})}).returncode
    stage = {"stage": name, "status": "passed" if code == 0 else "failed", "exit_code": code,
             "seconds": round(time.perf_counter() - start, 1), "command": " ".join(command), "log": log.name}
    if code != 0:
        stage["detail"] = last_line(log)
    report["stages"].append(stage)
    print(f"gpu-check: {name} {stage['status']} in {stage['seconds']} s", flush=True)
    return code == 0


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


def check(out: Path, flavour_wanted: str, nvidia_smi: str) -> dict:
    """Every stage in order; stops after machine or setup failures (nothing else can run)."""
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": MODEL,
              "image_size": IMAGE_SIZE, "stages": [], "result": "passed"}
    report["machine"], reason = probe_machine(nvidia_smi)
    if reason is None:
        report["flavour"], reason = choose_flavour(report["machine"]["driver"], flavour_wanted)
    for gpu in report["machine"]["gpus"]:
        print(f"gpu-check: {gpu['name']} (sm {gpu['compute_capability']}, {gpu['memory_mib']} MiB), driver "
              f"{gpu['driver']}, runs CUDA up to {report['machine'].get('driver_cuda')}", flush=True)
    if reason:
        report.update(result="stopped", reason=reason)
        report["stages"].append({"stage": "machine", "status": "stopped", "detail": reason})
        return report
    python, work = str(ROOT / ".venv/bin/python"), out / "work"
    if not run_stage(report, "setup", ["bash", "scripts/setup-env.sh"], out, {"EXTRAS": f"dev,{report['flavour']}"}):
        report.update(result="stopped", reason=f"setup failed: {report['stages'][-1]['detail']}")
        return report
    if run_stage(report, "stack", [python, "-m", "runtime.gpu_stack", "describe", str(out / "stack.json")], out):
        report["stack"] = stack = json.loads((out / "stack.json").read_text())
        print(f"gpu-check: {report['flavour']}: torch {stack['torch']} (CUDA {stack['torch_cuda']}), TensorRT "
              f"{stack['tensorrt']}, ONNX Runtime {(stack['onnxruntime'] or {}).get('version')}; packages in "
              f"{out / 'stack.json'}", flush=True)
    junit = out / "gpu-tests.xml"
    run_stage(report, "tests", [python, "-m", "pytest", "-m", "gpu or trt", "-rs", "-s", "-p", "no:cacheprovider",
                                f"--junitxml={junit}"], out, {"DIT_REQUIRE_GPU": "1"})
    report["tests"] = parse_junit(junit)
    graph_dir = work / f"{MODEL.replace('/', '-')}-{IMAGE_SIZE}"  # where throughput.py looks for it
    batches = os.environ.get("BATCHES", "1,8")
    largest = max(int(batch) for batch in batches.split(","))  # the profile the benchmark needs, no larger
    run_stage(report, "engine", [str(ROOT / ".venv/bin/dit-export"), "--model", MODEL, "--image-size",
                                 str(IMAGE_SIZE), "--random-init", "0", "--fp16", "--out", str(graph_dir),
                                 "--batch", f"1:{largest}:{largest}", "--engine", "required"], out)
    report["engine"] = engine_figures(work)
    throughput = out / "throughput.json"
    run_stage(report, "throughput", [python, "benchmarks/throughput.py", "--model", MODEL, "--image-size",
                                     str(IMAGE_SIZE), "--batch", batches, "--backends",
                                     BENCHMARKED, "--steps", "20", "--work-dir", str(work),
                                     "--json", str(throughput)], out)
    report["throughput"] = json.loads(throughput.read_text()) if throughput.exists() else []
    failed = [stage["stage"] for stage in report["stages"] if stage["status"] != "passed"]
    if failed:
        report.update(result="failed", reason=f"failed: {', '.join(failed)}")
    return report


def main() -> int:
    out = Path(os.environ.get("OUT", "gpu-check")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = check(out, os.environ.get("FLAVOUR", "auto"), os.environ.get("NVIDIA_SMI", "nvidia-smi"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_report import markdown

    (out / "gpu-report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu-report.md").write_text(markdown(report))
    print(f"gpu-check: {report['result']}" + (f": {report['reason']}" if report.get("reason") else ""))
    print(f"gpu-check: wrote {out / 'gpu-report.md'} and {out / 'gpu-report.json'}")
    return 0 if report["result"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
