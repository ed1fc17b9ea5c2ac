"""The one place a runner's own I/O is checked against its manifest: names, input/output modes, types, shapes.

The file is the truth: a manifest that claims other tensors, types or sizes than the file has (edited, or
copied from another export) is refused, naming what differs.
"""

import torch

from dit_ref.contract import (
    DECODER_INPUT, DECODER_OUTPUT, IO_DTYPES, DecoderManifest, Manifest, check_decoder_io, check_io_shapes, input_names,
    output_names,
)
from dit_ref.errors import DiTError
from dit_ref.runners.base import Runner


def _describe(entry) -> str:
    """(is_input, dtype) -> "input float32"; a type torch lacks -> "input INT4 (no torch type)"; None -> "absent"."""
    if entry is None:
        return "absent"
    is_input, dtype = entry
    kind = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else f"{dtype} (no torch type)"
    return f"{'input' if is_input else 'output'} {kind}"


def check_io_tensors(found: dict, inputs: tuple[str, ...] = input_names(True),
                     outputs: tuple[str, ...] = output_names(True), what: str = "the engine",
                     remedy: str = "re-export the graph and rebuild the engine with this version of dit-deploy") -> None:
    """found: name -> (is_input, torch dtype or the runtime's name of a foreign type); DiTError unless it is exactly
    the graph contract's I/O (the manifest's input and output names, in their contract dtypes)."""
    expected = {name: (name in inputs, IO_DTYPES[name]) for name in (*inputs, *outputs)}
    wrong = [f"{name} is {_describe(found.get(name))}, expected {_describe(expected.get(name))}"
             for name in sorted(set(found) | set(expected)) if found.get(name) != expected.get(name)]
    if wrong:
        raise DiTError(f"{what} does not have the graph's I/O ({'; '.join(wrong)}); {remedy}")


def found_io(runner: Runner) -> dict:
    """name -> (is_input, dtype) of the runner's own I/O."""
    return {name: (name in runner.input_names, runner.dtypes.get(name))
            for name in (*runner.input_names, *runner.output_names)}


def check_io(runner: Runner, manifest: Manifest | DecoderManifest) -> None:
    """DiTError unless the runner's file has its manifest's I/O: a DiT graph's (the guided contract, of the
    manifest's format and role) or a VAE decoder's (float32 latents -> images)."""
    if isinstance(manifest, DecoderManifest):
        dtypes = {name: runner.dtypes.get(name) for name in (*runner.input_names, *runner.output_names)}
        if dtypes != {DECODER_INPUT: torch.float32, DECODER_OUTPUT: torch.float32}:
            raise DiTError(f"{runner.path.name} has I/O {dtypes}, not a decoder's float32 latents -> images; "
                           "re-export it")
        check_decoder_io(manifest, runner.shapes, runner.path)
        return
    if runner.runtime == "tensorrt":
        check_io_tensors(found_io(runner), manifest.input_names, manifest.output_names)
        check_io_shapes(manifest, runner.shapes, runner.path)
        return
    if sorted(runner.input_names) != sorted(manifest.input_names) or "eps" not in runner.output_names:
        raise DiTError(f"{runner.path} is not a guided DiT graph (inputs {list(runner.input_names)}, outputs "
                       f"{list(runner.output_names)}; expected {list(manifest.input_names)} -> "
                       f"{list(manifest.output_names)}); export it with dit-export")
    check_io_shapes(manifest, runner.shapes, runner.path)
    check_io_tensors(found_io(runner), manifest.input_names, manifest.output_names, f"the graph {runner.path.name}",
                     "re-export it with dit-export")
