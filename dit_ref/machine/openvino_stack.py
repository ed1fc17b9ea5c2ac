"""OpenVINO as the runner layer (dit_ref.runners.openvino_runner) uses it: importing it, reading a graph, port names.

OpenVINO reads the exported .onnx itself (FP32, FP16- and BF16-typed graphs, Q/DQ graphs). It is in the
`cpu` extra; a missing install is one line saying what to do.
"""

from dit_ref.contract import DECODER_INPUT, DECODER_OUTPUT, IO_DTYPES
from dit_ref.errors import DiTError

NOT_INSTALLED = "OpenVINO is not installed: pip install -e '.[cpu]' (or pip install openvino)"
# What the precision hint means: f32 computes every op in float32 (a BF16-typed graph's bf16 ops as written);
# bf16 lets OpenVINO compute in bfloat16 where the CPU has bf16 units (its default on such CPUs), which
# also drops the graph's float32 islands.
HINTS = ("f32", "bf16")


def import_openvino():
    """The openvino module; DiTError saying what to install when it is missing."""
    try:
        import openvino
    except ModuleNotFoundError as error:
        if error.name not in ("openvino", None):
            raise
        raise DiTError(NOT_INSTALLED) from None
    return openvino


def read_onnx(openvino, graph_path):
    """The graph through OpenVINO's ONNX frontend alone (Core.read_model tries every frontend on a broken file,
    and the others print their own parse errors)."""
    frontend = openvino.frontend.FrontEndManager().load_by_framework("onnx")
    if not frontend.supported(str(graph_path)):
        raise RuntimeError("not an ONNX model OpenVINO can read")
    return frontend.convert(frontend.load(str(graph_path)))


def port_name(port) -> str:
    """A port's contract name (x, eps, ..., latents, images) when it has one: OpenVINO may give a port other tensor
    names too."""
    names = port.get_names()
    return next((name for name in (*IO_DTYPES, DECODER_INPUT, DECODER_OUTPUT) if name in names), port.get_any_name())


def cpu_has_bf16() -> bool:
    """Whether OpenVINO computes bfloat16 natively on this CPU (its BF16 optimization capability)."""
    openvino = import_openvino()
    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
