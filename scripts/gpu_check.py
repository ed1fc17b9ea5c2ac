"""The GPU path checked end to end on a Linux machine with an NVIDIA GPU (run by scripts/gpu-check.sh).

Stages, each logged under OUT (default gpu-check/) and reported with its time and outcome:
  machine     nvidia-smi: driver, GPUs, the CUDA the driver supports; without them it stops at once
  setup       scripts/setup-env.sh with EXTRAS=dev,FLAVOUR (FLAVOUR, else chosen from the driver)
  stack       python -m dit_ref.machine.gpu_stack describe: torch, CUDA, cuDNN, TensorRT, Polygraphy, ONNX Runtime
  tests       DIT_REQUIRE_GPU pytest -m "gpu or trt" over the test files that hold such tests (junit XML)
  engine      dit-export FP16 with --engine required: XL/2 at level 3 (S/2 at level 1 with --no-install)
  compare     python -m export.compare_engine: that engine in Polygraphy's TrtRunner against ONNX Runtime
  throughput  benchmarks/throughput.py on XL/2: TensorRT, torch eager/compiled/CUDA graphs, ONNX Runtime on CUDA
  engine-throughput  (--no-install with TensorRT) the S/2 engine beside torch's CUDA graphs on S/2
  overhead    benchmarks/sampler_overhead.py: the sampling loop's host work per step on CUDA (torch)
Then OUT/gpu-report.md and OUT/gpu-report.json with every figure and error, ready to paste into an issue.
The result is "passed" only when everything was checked: a missing TensorRT or CUDA provider, a skipped stage
or GPU test makes it "partial", naming what was not checked (scripts/gpu_plan.py decides). Exit code 0 for
passed or partial, 1 for failed or stopped; with --require-all partial is 1 too. Standard library only: it runs
before .venv exists.

--no-install (a machine without network, torch preinstalled): no set-up; the Python it runs in (PYTHON,
default this one) with the checkout on PYTHONPATH; a stage whose packages that Python lacks is skipped with
the reason, GPU tests needing what it lacks skip with theirs; every stage is bounded (gpu_plan.stage_limits;
LIMIT_SCALE=2 doubles the bounds), the torch CUDA paths within 8 minutes on one GPU.
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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_plan  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = {"gpu-cu13": (580,), "gpu-cu12": (525, 60, 13)}  # oldest Linux driver per flavour (CUDA 13 / 12)
MODEL, IMAGE_SIZE = "XL/2", 256  # the throughput stage's model
# --no-install: what each stage imports (a stage whose modules do not import is skipped, saying which is missing)
STAGE_MODULES = {"tests": ("pytest", "onnx", "onnxscript", "runtime.generate", "export.onnx_export"),
                 "torch-tests": ("pytest", "runtime.generate", "runtime.backends.torch_backend", "export.guided"),
                 "engine": ("tensorrt", "polygraphy", "onnx", "onnxscript", "export.pipeline"),
                 "compare": ("tensorrt", "polygraphy", "onnxruntime", "export.compare_engine"),
                 "throughput": ("click", "benchmarks.throughput", "benchmarks.measure", "runtime.backends.torch_backend"),
                 "overhead": ("click", "benchmarks.sampler_overhead")}
GPU_MARKS = ("mark.gpu", "mark.trt", "mark.onnxruntime_cuda")  # how a test file says it holds GPU tests
TORCH_TESTS = "tests/gpu/test_torch_cuda.py"  # what collects without onnx: the torch CUDA tests


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
             "seconds": round(time.perf_counter() - start, 1), "limit_s": seconds, "command": " ".join(command),
             "log": log.name}
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


def gpu_test_files(root: Path = ROOT) -> list[str]:
    """The test files that hold gpu, trt or onnxruntime_cuda tests: pytest collects only these, so a module that
    this environment cannot import elsewhere in tests/ does not stop the run."""
    return sorted(str(path.relative_to(root)) for path in (root / "tests").rglob("test_*.py")
                  if any(mark in path.read_text(errors="replace") for mark in GPU_MARKS))


def engine_figures(graph: Path | None) -> dict | None:
    """The engine's manifest record and the sizes of its files."""
    manifest = graph.with_suffix(".json") if graph else None
    if manifest is None or not manifest.exists():
        return None
    record = json.loads(manifest.read_text())
    sizes = {path.suffix: round(path.stat().st_size / 2**20, 1) for path in (graph, graph.with_suffix(".plan"))
             if path.exists()}
    return {"model": record.get("model"), "engine": record.get("engine"), "batch": record.get("batch"),
            "graph_mib": sizes.get(".onnx"), "plan_mib": sizes.get(".plan")}


@dataclass
class Run:
    """One gpu-check run: its report, the Python and environment the stages run in, their bounds."""

    report: dict
    python: str
    env: dict
    out: Path
    install: bool
    limits: dict = field(default_factory=dict)

    def stage(self, name: str, command: list[str], env: dict | None = None) -> bool:
        return run_stage(self.report, name, command, self.out, {**self.env, **(env or {})}, self.limits.get(name))

    def can_run(self, name: str, modules: tuple[str, ...] | None = None) -> bool:
        """Whether the stage's modules import here (always when installed); a skipped stage otherwise."""
        reason = None if self.install else missing_module(self.python, modules or STAGE_MODULES[name], self.env)
        if reason:
            skip_stage(self.report, name, reason)
        return reason is None


def check(out: Path, flavour_wanted: str, nvidia_smi: str, install: bool = True, scale: float = 1.0) -> dict:
    """Every stage in order; stops after machine or setup failures (nothing else can run)."""
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": MODEL,
              "image_size": IMAGE_SIZE, "stages": [], "result": None, "mode": "install" if install else "no-install"}
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
    run_all(Run(report, python, env, out, install, gpu_plan.stage_limits(install, False, scale)), scale)
    report["result"], report["reason"] = gpu_plan.verdict(report)
    report["not_checked"] = [{"what": what, "why": why} for what, why in gpu_plan.not_checked(report)]
    return report


def run_all(run: Run, scale: float = 1.0) -> None:
    """stack, tests, engine, compare, throughput and overhead; without install each only where its packages
    import, bounded by limits sized once the stack says whether TensorRT is here."""
    missing = stack_stage(run)
    run.limits = gpu_plan.stage_limits(run.install, not missing.get("tensorrt"), scale)
    tests_stage(run, missing)
    graph = engine_stage(run, missing)
    compare_stage(run, graph)
    throughput_stages(run, missing, graph)
    if run.can_run("overhead"):
        batches = os.environ.get("BATCHES", "1,8")
        run.stage("overhead", [run.python, "benchmarks/sampler_overhead.py", "--model", "S/2", "--batch", batches,
                               "--steps", "10", "--backends", "torch"])


def stack_stage(run: Run) -> dict:
    """The stack's versions into the report; what it lacks (gpu_stack's "missing", every piece when it failed)."""
    path = run.out / "stack.json"
    if not run.stage("stack", [run.python, "-m", "dit_ref.machine.gpu_stack", "describe", str(path)]):
        return {key: "not known: the stack stage failed" for key in ("tensorrt", "polygraphy", "onnxruntime_cuda")}
    run.report["stack"] = stack = json.loads(path.read_text())
    print(f"gpu-check: {run.report['flavour']}: torch {stack['torch']} (CUDA {stack['torch_cuda']}), TensorRT "
          f"{stack['tensorrt']}, ONNX Runtime {(stack.get('onnxruntime') or {}).get('version')}; packages in {path}",
          flush=True)
    return stack.get("missing") or {}


def tests_stage(run: Run, missing: dict) -> None:
    """The GPU tests with DIT_REQUIRE_GPU naming what must be here; without onnx only the torch CUDA tests."""
    files = gpu_test_files()
    cannot_export = None if run.install else missing_module(run.python, STAGE_MODULES["tests"], run.env)
    if cannot_export:
        skip_stage(run.report, "tests needing onnx", cannot_export)
        files = [TORCH_TESTS]
    junit = run.out / "gpu-tests.xml"
    run.report["require_gpu"] = required = gpu_plan.required_markers(run.install, missing)
    if run.can_run("tests", STAGE_MODULES["torch-tests"]):
        run.stage("tests", [run.python, "-m", "pytest", *files, "-m", "gpu or trt", "-rs", "-s", "-p",
                            "no:cacheprovider", f"--junitxml={junit}"], {"DIT_REQUIRE_GPU": required})
    run.report["tests"] = parse_junit(junit)


def engine_stage(run: Run, missing: dict) -> Path | None:
    """Export and build the FP16 engine (XL/2, or S/2 at a low level without install); its graph, or None."""
    model, level = gpu_plan.ENGINE_MODEL[run.install]
    graph_dir = run.out / "work" / f"{model.replace('/', '-')}-{IMAGE_SIZE}"  # where throughput.py looks for it
    graph = graph_dir / f"DiT-{model.replace('/', '-')}-{IMAGE_SIZE}-fp16.onnx"
    largest = max(int(batch) for batch in os.environ.get("BATCHES", "1,8").split(","))
    if missing.get("tensorrt"):
        skip_stage(run.report, "engine", missing["tensorrt"])
        return None
    if not run.can_run("engine") or not run.stage("engine", [
            run.python, "-m", "export.cli", "--model", model, "--image-size", str(IMAGE_SIZE), "--random-init", "0",
            "--fp16", "--out", str(graph_dir), "--batch", f"1:{largest}:{largest}", "--opt-level", str(level),
            "--engine", "required"]):
        return None
    run.report["engine"] = engine_figures(graph)
    return graph


def compare_stage(run: Run, graph: Path | None) -> None:
    """The engine against ONNX Runtime through Polygraphy's Comparator (export.compare_engine)."""
    if graph is None:
        skip_stage(run.report, "compare", "no engine was built (see the engine stage)")
        return
    path = run.out / "compare.json"
    if run.can_run("compare"):
        run.stage("compare", [run.python, "-m", "export.compare_engine", str(graph), "--json", str(path)])
    run.report["compare"] = json.loads(path.read_text()) if path.exists() else None


def throughput_stages(run: Run, missing: dict, graph: Path | None) -> None:
    """XL/2 throughput of the chosen settings; without install and with an S/2 engine, that engine beside torch's
    CUDA graphs on S/2. Bounded runs give throughput.py their time as --time-budget."""
    run.report["throughput"] = []
    if not run.can_run("throughput"):
        return
    batches = os.environ.get("BATCHES", "1,8")
    runs = [("throughput", MODEL, gpu_plan.throughput_backends(run.install, not missing.get("onnxruntime_cuda")))]
    if graph is not None and not run.install:
        runs.append(("engine-throughput", gpu_plan.ENGINE_MODEL[False][0], gpu_plan.ENGINE_BENCHMARKED))
    for name, model, chosen in runs:
        path = run.out / f"{name}.json"
        bounds = []
        if name in run.limits:
            bounds = ["--time-budget", str(max(run.limits[name] - gpu_plan.THROUGHPUT_SLACK, 1)), "--worker-seconds",
                      str(gpu_plan.WORKER_SECONDS)]
        run.stage(name, [run.python, "benchmarks/throughput.py", "--model", model, "--image-size", str(IMAGE_SIZE),
                         "--batch", batches, "--backends", chosen, "--steps", "20", "--work-dir",
                         str(run.out / "work"), "--json", str(path), *bounds])
        run.report["throughput"] += json.loads(path.read_text()) if path.exists() else []


def main(argv: list[str]) -> int:
    out = Path(os.environ.get("OUT", "gpu-check")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    options = ("--no-install", "--require-all")
    unknown = [argument for argument in argv if argument not in options]
    if unknown:
        print(f"gpu-check: unknown argument {unknown[0]}; the options are {' and '.join(options)}", file=sys.stderr)
        return 2
    install = "--no-install" not in argv and os.environ.get("NO_INSTALL", "") in ("", "0")
    scale = float(os.environ.get("LIMIT_SCALE") or 1)
    report = check(out, os.environ.get("FLAVOUR", "auto"), os.environ.get("NVIDIA_SMI", "nvidia-smi"), install, scale)
    from gpu_report import markdown

    (out / "gpu-report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu-report.md").write_text(markdown(report))
    print(f"gpu-check: {report['result']}" + (f": {report['reason']}" if report.get("reason") else ""))
    for gap in report.get("not_checked", []):
        print(f"gpu-check: not checked: {gap['what']}: {gap['why']}")
    print(f"gpu-check: wrote {out / 'gpu-report.md'} and {out / 'gpu-report.json'}")
    return gpu_plan.exit_code(report["result"], "--require-all" in argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
