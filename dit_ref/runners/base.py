"""What every runner is: a graph or engine file opened in one runtime, run on named torch tensors, closed."""

from pathlib import Path

import torch

from dit_ref.contract import DECODER_INPUT, DECODER_OUTPUT, IO_DTYPES, BatchRange

# The dtype each I/O tensor of a DiT graph or a decoder graph crosses the runner in. A name outside the contracts
# (a benchmark's own graph) keeps the dtype it is given.
CONTRACT_DTYPES = {**IO_DTYPES, DECODER_INPUT: torch.float32, DECODER_OUTPUT: torch.float32}


class Runner:
    """A graph or engine in one runtime: run(named tensors) -> named tensors on `device`; close() / with."""

    runtime: str  # "onnxruntime", "openvino" or "tensorrt"
    device: torch.device  # where run() puts its inputs and returns its outputs
    name: str  # "onnxruntime-cpu", "openvino-cpu (bf16 compute)", "tensorrt", ...
    path: Path  # the graph (.onnx) or engine (.plan) file
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    shapes: dict  # the file's own I/O shapes, name -> batch first (the first dimension may be symbolic)
    dtypes: dict  # the file's own I/O types, name -> torch dtype, or the runtime's name of a type torch lacks
    batch_range: BatchRange | None = None  # an engine's optimization profile; None: a graph takes any batch

    def run(self, inputs: dict) -> dict:
        """The file on named inputs -> its named outputs (torch tensors on self.device)."""
        raise NotImplementedError

    def close(self) -> None:
        """Free what the runtime holds (session, compiled model, engine, device memory). Safe to call twice."""

    def feeds(self, inputs: dict) -> dict:
        """The inputs on this runner's device, in the contract's dtypes, contiguous (no copy where they are)."""
        return {name: value.to(self.device, CONTRACT_DTYPES.get(name, value.dtype)).contiguous()
                for name, value in inputs.items()}

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False
