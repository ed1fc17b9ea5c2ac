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


def denoiser_probes(source: str) -> list[str]:
    """"what line" of each assignment to an attribute of a denoiser held in a variable (`denoiser.x = ...`,
    `inner.x += ...`) and each setattr/getattr/hasattr on one, in a module's source."""
    def is_denoiser(node) -> bool:
        return isinstance(node, ast.Name) and ("denoiser" in node.id.lower() or node.id in ("inner", "base"))

    found = []
    for node in ast.walk(ast.parse(source)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        found += [f"{target.value.id}.{target.attr} = line {node.lineno}" for target in targets
                  if isinstance(target, ast.Attribute) and is_denoiser(target.value)]
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("setattr", "getattr", "hasattr")
                and node.args and is_denoiser(node.args[0])):
            found.append(f"{node.func.id}({node.args[0].id}, ...) line {node.lineno}")
    return found


def test_nothing_is_set_on_or_probed_in_a_denoiser_from_outside():
    """What runtime.denoiser.Denoiser declares is all its callers use: nothing set on one, nothing probed."""
    sample = "denoiser.path = p\nsetattr(inner, 'x', 1)\nhasattr(denoiser, 'stateful')\nself.x = 1\nplan.x = 2\n"
    assert len(denoiser_probes(sample)) == 3, denoiser_probes(sample)  # the reader finds what it looks for
    files = [*modules().values(), *(ROOT / "scripts").glob("*.py")]
    found = [f"{path.relative_to(ROOT)}: {probe}" for path in files for probe in denoiser_probes(path.read_text())]
    print(f"{len(files)} files read")
    assert not found, "; ".join(found)
