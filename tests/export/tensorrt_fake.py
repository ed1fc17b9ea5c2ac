"""A stand-in `tensorrt` module for CPU tests of the engine build: just the calls export.engine and Polygraphy's
CreateConfig make, each recorded, so the arguments we pass through Polygraphy can be checked without TensorRT.

It follows TensorRT 10.12+/11.x's Python API as documented (IBuilderConfig, IOptimizationProfile,
OnnxParser); set_shape raises RuntimeError on an inconsistent shape as the bindings do.
"""

import enum
import importlib
import sys
from types import ModuleType, SimpleNamespace


class BuilderFlag(enum.IntEnum):
    TF32 = 0
    REFIT = 1


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 0  # 11.x's number


class Profile:
    def __init__(self, calls):
        self.calls, self.shapes = calls, {}

    def set_shape(self, name, low, opt, high):
        if not (len(low) == len(opt) == len(high)) or any(a > b for a, b in zip(low, high)):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))
        self.calls.append(("set_shape", name, self.shapes[name]))

    def __bool__(self):
        return True


class Config:
    def __init__(self, calls):
        self.calls, self.cache, self.profiles = calls, None, []
        self.flags = {BuilderFlag.TF32}  # on by default, as in TensorRT

    def __setattr__(self, name, value):
        if name in ("builder_optimization_level", "progress_monitor", "profiling_verbosity"):
            self.calls.append((name, value))
        super().__setattr__(name, value)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def set_flag(self, flag):
        self.flags.add(flag)

    def set_memory_pool_limit(self, pool, size):
        self.calls.append(("set_memory_pool_limit", pool, size))

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data):
        if bytes(data).startswith(b"corrupt"):
            return None
        return SimpleNamespace(data=bytes(data), serialize=lambda: b"cache:" + bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache.data.startswith(b"other-gpu"):
            return False
        self.cache = cache
        self.calls.append(("set_timing_cache", cache.data))
        return True

    def get_timing_cache(self):
        return self.cache


class Network:
    def __init__(self, inputs):
        self.inputs = [SimpleNamespace(name=name, shape=shape, dtype="float32", is_shape_tensor=False)
                       for name, shape in inputs.items()]

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, index):
        return self.inputs[index]

    def __iter__(self):
        return iter(())  # no layers: Polygraphy looks for layers with a precision set


def make_tensorrt(inputs: dict, parse_errors=(), version: str = "11.4.0") -> ModuleType:
    """A fake tensorrt whose parser "parses" any file into a network with these inputs (name -> dims, -1
    dynamic), or fails with these errors (node, operator, description). Its `calls` lists what was done."""
    trt = ModuleType("tensorrt")
    trt.__version__, trt.calls = version, []
    trt.BuilderFlag, trt.MemoryPoolType = BuilderFlag, MemoryPoolType
    trt.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
    trt.ProfilingVerbosity = SimpleNamespace(DETAILED="detailed")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity=2: None})

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            trt.calls.append(("create_network", flags))
            return Network(inputs)

        def create_optimization_profile(self):
            return Profile(trt.calls)

        def create_builder_config(self):
            trt.config = Config(trt.calls)
            return trt.config

    class OnnxParser:
        def __init__(self, network, logger):
            self.errors = [SimpleNamespace(node_name=lambda n=n: n, node_operator=lambda o=o: o, desc=lambda d=d: d)
                           for n, o, d in parse_errors]
            self.num_errors = len(self.errors)

        def parse_from_file(self, path):
            trt.calls.append(("parse_from_file", path))
            return not self.errors

        def get_error(self, index):
            return self.errors[index]

    class IProgressMonitor:
        def __init__(self):
            pass

    trt.Builder, trt.OnnxParser, trt.IProgressMonitor = Builder, OnnxParser, IProgressMonitor
    return trt


def install(monkeypatch, trt: ModuleType) -> None:
    """Make `import tensorrt` (ours and Polygraphy's lazy one) give the fake for one test; forget() after it."""
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    forget()


def forget() -> None:
    """Drop the TensorRT module that the process's logger and Polygraphy's lazy imports have kept."""
    from dit_ref.machine import tensorrt_stack

    tensorrt_stack.trt_logger.cache_clear()
    for name in ("config", "loader", "util"):  # each lazy module keeps the first module it imported
        module = importlib.import_module(f"polygraphy.backend.trt.{name}")
        object.__setattr__(module.trt, "module", None)
