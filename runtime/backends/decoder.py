"""The VAE decoder graph or engine (dit-export --vae) on ONNX Runtime, OpenVINO or TensorRT: one call's latents
(n, C, L, L) float32 -> images (n, 3, 8L, 8L) float32, as runtime.vae.GraphDecoder calls it.

A .plan runs in TensorRT on a CUDA GPU; a .onnx in ONNX Runtime on a GPU where its CUDA provider is, else on the
CPU in CPU_CHOICE's backend for its precision (docs/benchmarks.md, VAE decode). Not in the denoiser
registry (runtime.backends.BACKENDS): a decoder has one input, one output and no sampling loop around it. Latents
and images cross to the host for ONNX Runtime and OpenVINO (the images go there anyway, as PNGs); TensorRT runs
on torch CUDA tensors (written against its documented API, not run on a GPU here).
"""

from pathlib import Path

import numpy as np
import torch

from dit_ref.contract import DECODER_INPUT, DECODER_OUTPUT, DecoderManifest, check_decoder_io
from dit_ref.errors import DiTError
from dit_ref.machine.cpu import physical_cores
from runtime.backends import onnxruntime_cuda_here, openvino_here

# The CPU runtime of each precision. FP32 and FP16 decode in ONNX Runtime: OpenVINO was at most 8% faster there
# (benchmarks/vae_decode.py, AMD EPYC: 1463 against 1505 ms at 256 px in FP32, slower in FP16 at 512 px), but
# dit-run with the FP16 SD VAE decoder in OpenVINO died of SIGSEGV in CI on another machine (not reproduced on
# the EPYC, nor under qemu's Haswell emulation), and ONNX Runtime is the runtime every decoder check uses. BF16
# runs in OpenVINO only (ONNX Runtime has no bfloat16 CPU kernels), 1.9x faster than FP32 in ONNX Runtime.
CPU_CHOICE = {"fp32": "onnxruntime", "fp16": "onnxruntime", "bf16": "openvino"}
ENGINE_SUFFIXES = (".plan", ".engine")


def decoder_backend(path: Path, manifest: DecoderManifest, device: torch.device) -> tuple[str, torch.device]:
    """(backend, device) for a decoder file next to a denoiser on `device`."""
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return "tensorrt", device if device.type == "cuda" else torch.device("cuda")
    if device.type == "cuda" and onnxruntime_cuda_here():
        return "onnxruntime", device
    if CPU_CHOICE[manifest.precision] == "openvino" and not openvino_here():
        raise DiTError(f"{path.name} is a bf16 decoder, which runs on a CPU in OpenVINO only: pip install -e '.[cpu]'")
    return CPU_CHOICE[manifest.precision], torch.device("cpu")


def load_decoder_runner(path: Path, manifest: DecoderManifest, device="cpu", threads: int | None = None):
    """(run, "backend-device"): run(latents) -> images, one call, for the decoder file."""
    backend, device = decoder_backend(path, manifest, torch.device(device))
    run = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner, "tensorrt": tensorrt_runner}[backend]
    return run(path, manifest, device, threads), f"{backend}-{device.type}"


def onnxruntime_runner(path: Path, manifest: DecoderManifest, device: torch.device, threads: int | None):
    from runtime.backends.onnxruntime_backend import check_precision, create_session

    check_precision(manifest.precision, device, path.name)
    session = create_session(path, device, threads)
    check_decoder_io(manifest, {node.name: tuple(node.shape) for node in [*session.get_inputs(),
                                                                          *session.get_outputs()]}, path)

    def run(x: torch.Tensor) -> torch.Tensor:
        feed = {DECODER_INPUT: x.to("cpu", torch.float32).contiguous().numpy()}
        return torch.from_numpy(session.run([DECODER_OUTPUT], feed)[0])

    return run


def openvino_runner(path: Path, manifest: DecoderManifest, device: torch.device, threads: int | None):
    """float32 inference: the graph's own types (a fp16 or bf16 graph's ops as written, its islands kept)."""
    from dit_ref.machine.openvino_stack import compile_graph, port_name

    compiled = compile_graph(path, "f32", threads or physical_cores())
    ports = [*compiled.inputs, *compiled.outputs]
    check_decoder_io(manifest, {port_name(port): tuple(dimension.get_length() if dimension.is_static else "B"
                                                       for dimension in port.get_partial_shape())
                                for port in ports}, path)
    request, output = compiled.create_infer_request(), compiled.output(DECODER_OUTPUT)

    def run(x: torch.Tensor) -> torch.Tensor:
        results = request.infer({DECODER_INPUT: x.to("cpu", torch.float32).contiguous().numpy()})
        return torch.from_numpy(np.array(results[output]))  # a copy: the request reuses its buffer

    return run


def tensorrt_runner(path: Path, manifest: DecoderManifest, device: torch.device, threads: int | None):
    """The engine on torch CUDA tensors, on its own stream ordered with the caller's both ways."""
    from dit_ref.machine.tensorrt_stack import engine_unavailable_reason, start_tensorrt
    from runtime.backends.tensorrt_backend import aligned, check_engine_fits, torch_dtypes

    reason = engine_unavailable_reason()
    if reason:
        raise DiTError(f"cannot run {path.name}: {reason}; pass its graph instead: --vae {path.with_suffix('.onnx')}")
    import tensorrt as trt

    device = torch.device("cuda", torch.cuda.current_device()) if device.index is None else device
    check_engine_fits(manifest, path, trt.__version__, torch.cuda.get_device_capability(device),
                      torch.cuda.get_device_name(device))
    runtime = start_tensorrt(trt.Runtime)
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise DiTError(f"TensorRT could not load {path.name} (its log above says why); rebuild it on this machine "
                       f"with: dit-export build {path.with_suffix('.onnx')}")
    names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
    dtypes = {name: torch_dtypes(trt).get(engine.get_tensor_dtype(name)) for name in names}
    if dtypes != {DECODER_INPUT: torch.float32, DECODER_OUTPUT: torch.float32}:
        raise DiTError(f"{path.name} has I/O {dtypes}, not a decoder's float32 latents -> images; re-export it")
    check_decoder_io(manifest, {name: tuple(engine.get_tensor_shape(name)) for name in names}, path)
    with torch.cuda.device(device):
        context, stream = engine.create_execution_context(), torch.cuda.Stream(device)
    image_shape = manifest.io_shapes()[DECODER_OUTPUT]

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.cuda.device(device):
            latents = aligned(x.to(device, torch.float32).contiguous())
            images = torch.empty((len(x), *image_shape), dtype=torch.float32, device=device)
            context.set_input_shape(DECODER_INPUT, tuple(latents.shape))
            context.set_tensor_address(DECODER_INPUT, latents.data_ptr())
            context.set_tensor_address(DECODER_OUTPUT, images.data_ptr())
            caller = torch.cuda.current_stream(device)
            stream.wait_stream(caller)  # the latents are written
            if not context.execute_async_v3(stream.cuda_stream):
                raise DiTError(f"TensorRT failed to run {path.name} (its log above says why)")
            caller.wait_stream(stream)  # the images are ready, and their memory is not reused before
            return images

    run.engine, run.runtime = engine, runtime  # the context needs them alive
    return run
