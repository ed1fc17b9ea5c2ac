"""export.compare_engine on a CPU: the inputs, the error measure, and Polygraphy's Comparator driving two ONNX
Runtime runners (the engine's side runs only on a GPU: gpu-check's compare stage)."""

import numpy as np
import pytest

from dit_ref.contract import GUIDED, read_manifest
from dit_ref.errors import DiTError
from export import compare_engine


def test_feeds_cover_every_batch_with_all_and_half_the_rows_guided(exported_graph):
    manifest = read_manifest(exported_graph("S/8", 256, "fp32"))
    inputs = compare_engine.feeds(manifest, [1, 4])
    assert [(len(feed["x"]), list(feed[GUIDED])) for feed in inputs] == [(1, [0]), (4, [0, 1, 2, 3]), (4, [0, 2])]
    feed = inputs[1]
    assert feed["x"].shape == (4, 4, 32, 32) and feed["x"].dtype == np.float32
    assert feed["t"].dtype == np.int64 and 0 <= feed["t"].min() and feed["t"].max() < 1000
    assert feed["y"].max() < manifest.num_classes and feed["cfg_scale"].dtype == np.float32
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(inputs, compare_engine.feeds(manifest, [1, 4]))
               for k in a)  # seeded


def test_relative_error_is_over_the_largest_reference_value():
    reference = [{"eps": np.array([1.0, -4.0])}, {"eps": np.array([2.0, 0.5])}]
    candidate = [{"eps": np.array([1.0, -4.1])}, {"eps": np.array([2.2, 0.5])}]
    assert compare_engine.relative_errors(candidate, reference) == {"eps": pytest.approx(0.2 / 4.0)}
    assert compare_engine.relative_errors([{"eps": np.array([np.nan, 0])}], reference[:1]) == {"eps": float("inf")}


def test_comparator_judges_the_fp16_graph_against_the_fp32_graph(exported_graph):
    pytest.importorskip("polygraphy", reason="Polygraphy is in the GPU extras: pip install polygraphy")
    from polygraphy.backend.onnxrt import OnnxrtRunner

    from export.verify import check_runner

    fp16, fp32 = exported_graph("S/8", 256, "fp16"), exported_graph("S/8", 256, "fp32")
    inputs = compare_engine.feeds(read_manifest(fp32), [1, 3])
    runners = [OnnxrtRunner(check_runner(fp16).session, name="fp16"), OnnxrtRunner(check_runner(fp32).session, name="fp32")]
    found = compare_engine.compare_runners(runners, inputs, tolerance=1e-2)
    print(f"FP16 graph vs FP32 graph in ONNX Runtime, S/8: {found['errors']['fp16']}")
    errors = found["errors"]["fp16"]
    assert set(errors) == {"eps", "var_values"} and 0 < max(errors.values()) < 1e-2 and found["passed"]
    strict = compare_engine.compare_runners(runners, inputs, tolerance=max(errors.values()) / 2)
    assert not strict["passed"] and strict["errors"] == found["errors"]  # Polygraphy's verdict is our measure's


def test_without_tensorrt_or_an_engine_it_says_why(exported_graph, tmp_path):
    from dit_ref.machine.tensorrt_stack import engine_unavailable_reason

    graph = exported_graph("S/8", 256, "fp32")
    with pytest.raises(DiTError) as caught:
        compare_engine.compare_engine(graph)
    reason = engine_unavailable_reason()
    assert str(caught.value) == reason if reason else "not found; build it first" in str(caught.value)
    assert compare_engine.main([str(graph), "--json", str(tmp_path / "out.json")]) == 1
    assert not (tmp_path / "out.json").exists()
