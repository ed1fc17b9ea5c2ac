"""The FP16 and BF16 graphs: exported from a float16 (bfloat16) copy of the DiT, whose float32 islands
survive export.

TensorRT 11 builds the types written in the graph, so --fp16 must write a typed graph. A float16 module
keeps dit_ref.model's float32 islands through export without calibration data, which NVIDIA ModelOpt's
AutoCast on the FP32 graph needs to be as accurate (it puts the timestep arithmetic in float16 unless shown t
near 999) and takes twice as long (docs/export.md, the FP16 graph, gives the measurement). The BF16 graph is
the same route with bfloat16 (TensorRT's strongly typed build on Ampere and newer, and CPUs with bfloat16
units through OpenVINO; ONNX Runtime has no bfloat16 kernels for MatMul, Conv or Gemm on CPU).
"""

import torch

from dit_ref import DiT


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # the typed graphs' compute dtype


def typed_copy(model: DiT, dtype: torch.dtype) -> DiT:
    """A float16 or bfloat16 copy of a DiT that leaves the original untouched and never holds two float32
    copies.

    The copy is built on the meta device and given tensors converted one at a time, so the peak is
    the float32 model plus the 16-bit copy (XL/2: 2.7 GB + 1.35 GB), not two float32 models.
    """
    with torch.device("meta"):
        copy = DiT(model.config, model.image_size, model.numerics)
    state = {name: tensor.detach().to(dtype) for name, tensor in model.state_dict().items()}
    copy.load_state_dict(state, assign=True)
    return copy.eval().requires_grad_(False)
