"""The export/runtime contract: the batch range, the manifest's schema, round trip and documentation."""

import dataclasses
import json
from pathlib import Path

import pytest

from dit_ref.contract import (
    FORMAT, BatchRange, Checkpoint, EngineRecord, GraphRecord, Manifest, check_io_shapes, read_manifest,
    write_manifest,
)
from dit_ref.errors import DiTError

MANIFEST_PAGE = Path(__file__).resolve().parents[2] / "docs" / "manifest.md"


def manifest(**changes) -> Manifest:
    base = Manifest(model="fashion", image_size=28, latent_size=28, latent_channels=1, num_classes=10,
                    learn_sigma=True, patch_size=4, decoder="pixels", precision="fp16", cfg_channels=1,
                    numerics="official", batch=BatchRange(1, 8, 32), opset=18,
                    checkpoint=Checkpoint("shipped:fashion", "ab" * 32, False), versions={"torch": "2.13.0"},
                    created="2026-11-25T00:00:00+00:00", graph=GraphRecord("fashion-28-fp16.onnx", "cd" * 32, None))
    return base.replace(**changes)


def test_batch_range_parse_contains_and_one_message():
    batch = BatchRange.parse("1:8:32")
    assert batch == BatchRange(1, 8, 32) and str(batch) == "1:8:32" and 32 in batch and 33 not in batch
    assert BatchRange.from_dict(batch.to_dict()) == batch
    with pytest.raises(DiTError, match="batch of 33 is outside the range 1..32; use --batch-size between 1 and 32"):
        batch.check(33)
    for text in ("8:1:32", "0:1:1", "1:8", "a:b:c"):
        with pytest.raises(DiTError, match="batch|--batch"):
            BatchRange.parse(text)


def test_a_version_2_manifest_is_read_without_quantization(tmp_path):
    record = {**manifest().to_dict(), "format": "dit-deploy-manifest/2"}
    del record["quantization"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(record))
    assert read_manifest(path) == manifest() and read_manifest(path).quantization is None


def test_manifest_round_trip(tmp_path):
    original = manifest(engine=EngineRecord("fashion-28-fp16.plan", "10.12.0.36", "NVIDIA A10", "8.6", 12.5, 3))
    path = write_manifest(tmp_path / "fashion-28-fp16.onnx", original)
    assert path.name == "fashion-28-fp16.json" and json.loads(path.read_text())["format"] == FORMAT
    assert read_manifest(tmp_path / "fashion-28-fp16.plan") == original
    assert [p.name for p in tmp_path.iterdir()] == ["fashion-28-fp16.json"]  # no temporary left


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.pop("num_classes"), "lacks num_classes"),
    (lambda m: m.update(format="dit-deploy-manifest/1"), "is not a dit-deploy-manifest/4 manifest"),
    (lambda m: m.update(latent_size="big"), "malformed field"),
    (lambda m: m.update(batch={"min": 4, "opt": 2, "max": 8}), "min <= opt <= max"),
])
def test_bad_manifests_are_named(tmp_path, edit, words):
    record = manifest().to_dict()
    edit(record)
    (tmp_path / "g.json").write_text(json.dumps(record))
    with pytest.raises(DiTError, match=words):
        read_manifest(tmp_path / "g.onnx")


def test_io_shapes_must_match_the_file():
    check_io_shapes(manifest(), {"x": ("B", 1, 28, 28), "t": ("B",), "y": ("B",), "cfg_scale": ("B",),
                                 "eps": ("B", 1, 28, 28), "var_values": ("B", 1, 28, 28)}, "g.onnx")
    with pytest.raises(DiTError, match="has tensors"):
        check_io_shapes(manifest(), {"x": ("B", 1, 28, 28), "t": ("B",), "y": ("B",), "cfg_scale": ("B",),
                                     "eps": ("B", 1, 28, 28)}, "g.onnx")


def test_every_field_is_documented_in_the_docs():
    text = MANIFEST_PAGE.read_text()
    table = text[text.index("## The manifest"):]
    for name in ["format", *(field.name for field in dataclasses.fields(Manifest))]:
        assert f"| `{name}` |" in table, name
