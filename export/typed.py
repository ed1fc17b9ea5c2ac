"""The FP16 and BF16 graphs: exported from a float16 (bfloat16) copy of the DiT, whose float32 islands
survive export.

TensorRT 11 builds the types written in the graph, so --fp16 must write a typed graph. Two routes
were measured (2026-11-23, CPU, ONNX Runtime 1.32, random-weight DiT-S/2 at 256 px, error =
max|graph - PyTorch float32| / max|PyTorch float32| on eps, var_values, batch 1 and 8):

- float16 module (this file): eps 5.8e-4 / 2.4e-3, var_values 4.9e-4 / 5.9e-4; 22.5 s export.
- ModelOpt 0.47 AutoCast (convert_to_mixed_precision, keep_io_types) on the FP32 graph: with its
  default random calibration inputs eps 2.2e-2 / 2.0e-2, var_values 3.1e-2 / 1.6e-2 (fails the
  1e-2 limit: it casts the timestep product t * freqs and sin/cos to float16, because random
  inputs never show t near 999); with calibration data holding t up to 999, eps 7.5e-4 / 1.9e-3,
  var_values 5.3e-4 / 6.4e-4, but 17 s FP32 export + 28 s AutoCast.

The float16 module is kept: same accuracy without calibration data, faster, no extra dependency
(nvidia-modelopt[onnx] pulls onnxruntime-gpu and cupy and pins an older onnx), and the islands are
defined once, in dit_ref.model, where the PyTorch FP16 reference uses the same ones. The BF16 graph
is the same route with bfloat16 (TensorRT's strongly typed build on Ampere and newer, and CPUs with
bfloat16 units through OpenVINO; ONNX Runtime has no bfloat16 kernels for MatMul, Conv or Gemm on CPU).
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
