"""The folder layout is the architecture: no import cycle inside the packages, and the floors hold.

Every import statement counts, those inside functions too (a function-level import hides a cycle from
Python, not from a reader). Floors: dit_ref <- export, dit_ref <- runtime <- benchmarks; export and
runtime meet only in dit_ref.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dit_ref", "export", "runtime", "benchmarks")
MAY_IMPORT = {"dit_ref": {"dit_ref"}, "export": {"dit_ref", "export"}, "runtime": {"dit_ref", "runtime"},
              "benchmarks": set(PACKAGES)}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports (the longest known prefix of each imported name)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            prefixes = [".".join(parts[:k]) for k in range(len(parts), 0, -1)]
            match = next((prefix for prefix in prefixes if prefix in known), None)
            if match:
                found.add(match)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) - {name} for name, path in found.items()}


def cycle_from(start: str, edges: dict[str, set[str]]) -> list[str] | None:
    """A path start -> ... -> start, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for target in sorted(edges.get(node, ())):
            if target == start:
                return path + [start]
            if target not in seen:
                seen.add(target)
                stack.append((target, path + [target]))
    return None


def test_no_import_cycle_inside_the_packages():
    edges = graph()
    cycles = [cycle for name in sorted(edges) if (cycle := cycle_from(name, edges))]
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports between them")
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles[:5])


def test_the_floors():
    wrong = [f"{name} imports {target}" for name, targets in graph().items() for target in sorted(targets)
             if target.split(".")[0] not in MAY_IMPORT[name.split(".")[0]]]
    assert not wrong, "; ".join(wrong)


# What only the runner layer makes: ONNX Runtime sessions, OpenVINO compiled models and infer requests, TensorRT
# engines and execution contexts (DESIGN.md: graphs run through one runner layer).
RUNNER_CALLS = ("InferenceSession", "compile_model", "create_infer_request", "deserialize_cuda_engine",
                "create_execution_context")
RUNNERS = ROOT / "dit_ref" / "runners"


def runner_calls(path: Path) -> list[str]:
    """"name line" of each call of a RUNNER_CALLS function (plain or as an attribute) in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
            if name in RUNNER_CALLS:
                found.append(f"{name} line {node.lineno}")
    return found


def test_sessions_and_compiled_models_are_made_in_the_runner_layer_only():
    files = [*modules().values(), *(ROOT / "scripts").glob("*.py")]
    outside = [f"{path.relative_to(ROOT)}: {call}" for path in files if RUNNERS not in path.parents
               for call in runner_calls(path)]
    inside = [call for path in RUNNERS.glob("*.py") for call in runner_calls(path)]
    print(f"{len(files)} files; the runner layer makes {len(inside)}: {', '.join(inside)}")
    assert inside, "the runner layer makes no session: the test reads the wrong calls"
    assert not outside, "made outside dit_ref/runners/: " + "; ".join(outside)
