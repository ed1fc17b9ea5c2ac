"""What this machine has and can run: its CPU (cores, instruction sets), whether TensorRT, ONNX Runtime and
OpenVINO import and why not, and the GPU stack the set-up installs and checks.

Probes only: they import the heavy packages inside the functions that need them, so export, runtime,
the benchmarks and the set-up scripts all import them anywhere.
"""
