"""A TensorRT engine checked against ONNX Runtime by Polygraphy's Comparator, independently of our runtime.

    python -m export.compare_engine DiT-S-2-256-fp16.onnx [--plan PATH] [--batch 1,8] [--json PATH]

The engine (the .plan beside the graph) runs in Polygraphy's TrtRunner, not in runtime/backends; the graph
runs in ONNX Runtime on the CPU, as export's own check runs it. Both get the same seeded inputs of the guided
graph at each batch (every row guided, then every other row). The error of an output is max |engine -
ONNX Runtime| over max |ONNX Runtime|, over all inputs; Polygraphy's compare_accuracy judges the same thing
(its max absolute difference against the tolerance times that scale) and prints its own statistics. The
users' equivalent is `polygraphy run GRAPH --trt --onnxrt`, which builds an engine of its own.
"""

import json
import sys
from pathlib import Path

import numpy as np

from dit_ref import configs
from dit_ref.contract import GUIDED, read_manifest
from dit_ref.errors import DiTError

# max |engine - ONNX Runtime| / max |ONNX Runtime|: the GPU tests' limits (tests/gpu/test_tensorrt_gpu.py)
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


def feeds(manifest, batches, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Seeded inputs of the graph at each batch size: every row guided, then (B > 1) every other row."""
    random = np.random.default_rng(seed)
    latent = (manifest.latent_channels, manifest.latent_size, manifest.latent_size)
    found = []
    for batch in batches:
        inputs = {"x": random.standard_normal((batch, *latent), dtype=np.float32),
                  "t": random.integers(0, configs.NUM_TIMESTEPS, batch, dtype=np.int64),
                  "y": random.integers(0, manifest.num_classes, batch, dtype=np.int64),
                  "cfg_scale": (1.0 + 4.0 * random.random(batch)).astype(np.float32)}
        if not manifest.guided_rows:  # a graph of an older format guides every row
            found.append(inputs)
            continue
        subsets = [np.arange(batch)] + ([np.arange(0, batch, 2)] if batch > 1 else [])
        found += [{**inputs, GUIDED: rows} for rows in subsets]
    return found


def relative_errors(candidate: list[dict], reference: list[dict]) -> dict[str, float]:
    """Output name -> max |candidate - reference| / max |reference| over every iteration (inf if not finite)."""
    errors = {}
    for name in reference[0]:
        got, want = ([np.asarray(outputs[name], np.float64) for outputs in side] for side in (candidate, reference))
        if not all(np.isfinite(array).all() for array in got):
            errors[name] = float("inf")
            continue
        scale = max(float(np.abs(array).max()) for array in want) or 1e-30
        errors[name] = max(float(np.abs(a - b).max()) for a, b in zip(got, want)) / scale
    return errors


def compare_runners(runners, inputs: list[dict], tolerance: float) -> dict:
    """Run Polygraphy runners (the last is the reference) on the inputs with its Comparator: each output's
    error against the reference and whether every runner is within tolerance, by Polygraphy's own verdict."""
    from polygraphy import comparator

    results = comparator.Comparator.run(runners, data_loader=inputs)
    outputs = [list(iterations) for _, iterations in results]
    reference = outputs[-1]
    scale = {name: max(float(np.abs(np.asarray(step[name])).max()) for step in reference) for name in reference[0]}
    errors = {name: relative_errors(candidate, reference) for name, candidate in
              zip([runner.name for runner in runners[:-1]], outputs[:-1])}
    simple = getattr(comparator, "SimpleCompareFunc", None) or comparator.CompareFunc.simple  # renamed in 0.53.6
    judge = simple(check_error_stat="max", rtol={"": 0.0}, atol={name: tolerance * value for name, value in scale.items()})
    passed = bool(comparator.Comparator.compare_accuracy(results, compare_func=judge))
    return {"errors": errors, "tolerance": tolerance, "passed": passed}


def cuda_runtime_on_search_path() -> None:
    """Polygraphy's CUDA wrapper looks for libcudart in LD_LIBRARY_PATH and a few fixed places; add the folder of
    the one torch has loaded (a CUDA 13 wheel keeps it where Polygraphy does not look)."""
    import os

    import torch

    torch.cuda.init()
    maps = Path("/proc/self/maps").read_text().splitlines() if Path("/proc/self/maps").exists() else []
    folders = {str(Path(line.split()[-1]).parent) for line in maps if "libcudart.so" in line.split()[-1]}
    if folders:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([*sorted(folders), os.environ.get("LD_LIBRARY_PATH", "")])


def compare_engine(graph: Path, plan: Path | None = None, batches=None, tolerance: float | None = None) -> dict:
    """The engine beside graph (or plan) against ONNX Runtime on the graph, at the manifest's min and max batch
    (or `batches`); DiTError when something needed is missing."""
    from dit_ref.machine.tensorrt_stack import engine_unavailable_reason, polygraphy_unavailable_reason
    from export.verify import check_runner

    graph = Path(graph)
    plan = Path(plan) if plan else graph.with_suffix(".plan")
    reason = engine_unavailable_reason() or polygraphy_unavailable_reason()
    if reason:
        raise DiTError(reason)
    manifest = read_manifest(graph)
    if not plan.is_file():
        raise DiTError(f"{plan} not found; build it first with dit-export build {graph}")
    if manifest.role != "guided" or (tolerance is None and manifest.precision not in TOLERANCE):
        raise DiTError(f"{graph.name} is a {manifest.precision} {manifest.role} graph; the comparison takes FP32 or "
                       "FP16 guided graphs (ONNX Runtime on the CPU has no bfloat16 kernels), or pass --tolerance")
    tolerance = TOLERANCE[manifest.precision] if tolerance is None else tolerance
    batches = batches or sorted({manifest.batch.min, manifest.batch.max})
    cuda_runtime_on_search_path()
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    runners = [TrtRunner(EngineFromBytes(BytesFromPath(str(plan))), name="tensorrt"),
               OnnxrtRunner(check_runner(graph).session, name="onnxruntime")]  # our session, Polygraphy's comparison
    inputs = feeds(manifest, batches)
    found = compare_runners(runners, inputs, tolerance)
    return {"graph": graph.name, "plan": plan.name, "precision": manifest.precision,
            "inputs": [{"batch": len(feed["x"]), "guided": len(feed.get(GUIDED, feed["x"]))} for feed in inputs],
            "errors": found["errors"]["tensorrt"], "tolerance": tolerance, "passed": found["passed"]}


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m export.compare_engine", description=__doc__.split("\n")[0])
    parser.add_argument("graph", type=Path)
    parser.add_argument("--plan", type=Path, help="the engine (default: the .plan beside the graph)")
    parser.add_argument("--batch", help="comma list of batch sizes (default: the manifest's min and max)")
    parser.add_argument("--tolerance", type=float, help="largest error allowed (default: 1e-4 FP32, 1e-2 FP16)")
    parser.add_argument("--json", type=Path, help="write the result here")
    arguments = parser.parse_args(argv)
    try:
        batches = [int(part) for part in arguments.batch.split(",")] if arguments.batch else None
        result = compare_engine(arguments.graph, arguments.plan, batches, arguments.tolerance)
    except (DiTError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    errors = ", ".join(f"{name} {value:.2e}" for name, value in result["errors"].items())
    print(f"{result['plan']} vs ONNX Runtime on {result['graph']}: {errors} (limit {result['tolerance']:g}): "
          f"{'passed' if result['passed'] else 'FAILED'}")
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
