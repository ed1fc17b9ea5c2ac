"""The pure parts of running a TensorRT engine on torch tensors: types, addresses, CUDA-graph keys, device memory.

No TensorRT import and no GPU needed: the CPU suite checks each of them (tests/runtime/test_tensorrt_backend.py).
"""

import torch

from dit_ref.contract import BatchRange

# TensorRT DataType member name -> torch dtype; None where torch has no dtype of TensorRT's layout (INT4 and FP4 are
# packed two to a byte: torch.int4 takes a byte an element, torch.float4_e2m1fn_x2 holds a pair), which the I/O check
# refuses. An explicit table: trt.nptype has no BF16 or FP8, and the members' numbers differ between releases.
TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
                "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool,
                "FP8": torch.float8_e4m3fn, "E8M0": getattr(torch, "float8_e8m0fnu", None), "INT4": None, "FP4": None}
ADDRESS_ALIGNMENT = 256  # bytes; set_tensor_address and set_device_memory need it


def torch_dtypes(trt) -> dict:
    """trt.DataType member -> torch dtype or None, for the members this TensorRT has (names are stable, values not)."""
    return {getattr(trt.DataType, name): dtype for name, dtype in TORCH_DTYPES.items() if hasattr(trt.DataType, name)}


def io_dtype(member, table: dict):
    """The torch dtype of a TensorRT DataType member, or its name where torch has none (refused by the I/O check)."""
    dtype = table.get(member)
    return dtype if dtype is not None else getattr(member, "name", str(member))


def aligned_buffer(nbytes: int, device) -> torch.Tensor:
    """A uint8 tensor of nbytes (at least 1) whose data starts on a 256-byte boundary."""
    buffer = torch.empty(max(nbytes, 1) + ADDRESS_ALIGNMENT, dtype=torch.uint8, device=device)
    start = -buffer.data_ptr() % ADDRESS_ALIGNMENT  # bytes to the next boundary
    return buffer[start:start + max(nbytes, 1)]


def aligned(tensor: torch.Tensor) -> torch.Tensor:
    """tensor itself if its data starts on a 256-byte boundary, else an aligned copy (e.g. of labels[3:5])."""
    if tensor.data_ptr() % ADDRESS_ALIGNMENT == 0:
        return tensor
    size = tensor.numel() * tensor.element_size()
    return aligned_buffer(size, tensor.device)[:size].view(tensor.dtype).view(tensor.shape).copy_(tensor)


def address(tensor: torch.Tensor, spare: torch.Tensor) -> int:
    """The address TensorRT is given for an I/O tensor (made contiguous and aligned first): its data's, or, for an empty
    tensor (no row guided: U = 0), whose data pointer torch reports as 0, that of `spare`, an aligned_buffer on the
    same device: TensorRT wants a valid address for every I/O tensor, empty or not."""
    return tensor.data_ptr() if tensor.numel() else spare.data_ptr()


def capture_key(inputs: dict) -> tuple:
    """The CUDA graph a call replays: one per set of input shapes, since a graph freezes its shapes (for a DiT
    engine, one per pair of batch B and guided rows U)."""
    return tuple((name, tuple(value.shape)) for name, value in inputs.items())


def graph_pairs(batch_range: BatchRange, guided_rows: bool) -> int:
    """How many CUDA graphs (each with its context) a DiT engine may capture: one per batch size, and per count of
    guided rows 0..B for a graph that takes `guided`."""
    sizes = range(batch_range.min, batch_range.max + 1)
    return sum(batch + 1 for batch in sizes) if guided_rows else len(sizes)


def memory_plan(context_bytes: int, contexts: int) -> dict:
    """Activation memory held by `contexts` execution contexts of one engine, each needing context_bytes: one
    allocation shared by all of them (they run one after another on one stream), against one each."""
    return {"contexts": contexts, "shared_bytes": context_bytes if contexts else 0,
            "unshared_bytes": context_bytes * contexts}
