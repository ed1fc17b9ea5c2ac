"""Nothing half-written: a failure or Ctrl-C at any step of saving leaves the output directory as it was."""

import functools
import os

import pytest

from dit_ref.errors import DiTError
from dit_ref.files import sha256_of_files, temporary_beside, temporary_for
from dit_ref import contract as manifests
from export import onnx_export, opcheck
from testing_utils import random_model

MANIFEST = onnx_export.graph_manifest(random_model("S/8", 256, 0), "fp32", 3, onnx_export.DEFAULT_BATCH, 18, None)


@functools.cache
def traced():
    """One traced tiny program shared by these tests (tracing is the slow part)."""
    return onnx_export.trace_graph(random_model("S/8", 256, 0), "fp32")


def listing(directory):
    return sorted(os.listdir(directory)) if directory.exists() else None


@pytest.mark.parametrize("where,error", [
    ("check_operators", DiTError("unsupported op")),  # a graph that fails the operator check
    ("check_graph", KeyboardInterrupt()),  # Ctrl-C while checking
    ("write_manifest", OSError(28, "No space left on device")),  # disk full at the last file
])
def test_failure_leaves_nothing(tmp_path, monkeypatch, where, error):
    (tmp_path / "existing.txt").write_text("kept")
    target = manifests if where == "write_manifest" else opcheck

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(target, where, fail)
    with pytest.raises((DiTError, KeyboardInterrupt)):
        onnx_export.save_graph(traced(), tmp_path, "DiT-S-8-256-fp32.onnx", MANIFEST)
    assert listing(tmp_path) == ["existing.txt"]


def test_failure_removes_an_output_directory_it_created(tmp_path, monkeypatch):
    monkeypatch.setattr(opcheck, "check_graph", lambda path: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        onnx_export.save_graph(traced(), tmp_path / "new" / "graphs", "g.onnx", MANIFEST)
    assert listing(tmp_path / "new") == []


def test_success_replaces_an_earlier_export(tmp_path):
    stale_data = tmp_path / "DiT-S-8-256-fp32.onnx.data"
    stale_data.write_bytes(b"weights of an earlier, larger export")
    (tmp_path / "DiT-S-8-256-fp32.onnx").write_bytes(b"old graph")
    graph = onnx_export.save_graph(traced(), tmp_path, "DiT-S-8-256-fp32.onnx", MANIFEST)
    assert listing(tmp_path) == ["DiT-S-8-256-fp32.json", "DiT-S-8-256-fp32.onnx"]
    assert manifests.read_manifest(graph).graph.sha256 == sha256_of_files(graph)


@pytest.mark.parametrize("name, suffix", [("records.json", ".tmp"), ("0123456789abcdef.npy", ".tmp.npy"),
                                          ("a.b.c", ".part")])
def test_a_temporary_names_the_file_it_stands_for(tmp_path, name, suffix):
    """A killed run's temporaries are found by the one function that reads temporary_beside's naming back."""
    temporary = temporary_beside(tmp_path / name, suffix=suffix)
    print(f"{name} -> {temporary.name}")
    assert temporary_for(temporary.name, suffix) == name and temporary_for(temporary.name, ".other") is None
    assert temporary_for(name, suffix) is None and temporary_for(f".{name}{suffix}", suffix) is None

