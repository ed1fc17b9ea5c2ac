"""From a DiT to a guided ONNX graph (FP32 or FP16-typed), its manifest, and a TensorRT engine."""

from export.pipeline import ExportResult, export

__all__ = ["ExportResult", "export"]
