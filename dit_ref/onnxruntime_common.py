"""ONNX Runtime as export's check and runtime's backend import it: one line when it is missing.

It is not a base dependency (pyproject.toml says why): the `cpu` extra brings the CPU package and
each gpu-cuXX extra brings onnxruntime-gpu, so a bare `pip install -e .` has neither.
"""

from dit_ref.errors import DiTError

NOT_INSTALLED = ("ONNX Runtime is not installed: pip install -e '.[cpu]' on a CPU machine, or set up a GPU "
                 "flavour (EXTRAS=dev,gpu-cu12 or gpu-cu13 bash scripts/setup-env.sh)")


def import_onnxruntime():
    """The onnxruntime module; DiTError saying what to install when neither package is there."""
    try:
        import onnxruntime
    except ModuleNotFoundError as error:
        if error.name not in ("onnxruntime", None):
            raise
        raise DiTError(NOT_INSTALLED) from None
    return onnxruntime
