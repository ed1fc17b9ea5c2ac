"""The export/runtime contract: the batch range, the manifest's schema, round trip and documentation."""

import dataclasses
import json
from pathlib import Path

import pytest

from dit_ref.contract import (
    DECODER_FORMAT, FORMAT, BatchRange, Checkpoint, DecoderManifest, EngineRecord, GraphRecord, Manifest,
    check_decoder_io, check_io_shapes, read_any_manifest, read_decoder_manifest, read_manifest, write_manifest,
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


def decoder_manifest(**changes) -> DecoderManifest:
    base = DecoderManifest(vae=Checkpoint("stabilityai/sd-vae-ft-mse", "ef" * 32, False), latent_channels=4,
                           latent_size=32, image_size=256, image_channels=3, scaling_factor=0.18215, precision="fp16",
                           float32_islands=("GroupNorm statistics and affine",), batch=BatchRange(1, 8, 8), opset=18,
                           versions={"diffusers": "0.42.1"}, created="2026-12-02T00:00:00+00:00",
                           graph=GraphRecord("sd-vae-ft-mse-256-fp16.onnx", "01" * 32, None))
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


def test_decoder_manifest_round_trip(tmp_path):
    original = decoder_manifest(engine=EngineRecord("sd-vae-ft-mse-256-fp16.plan", "11.4.0", "NVIDIA L4", "8.9", 40.0, 3))
    path = write_manifest(tmp_path / "sd-vae-ft-mse-256-fp16.onnx", original)
    assert json.loads(path.read_text())["format"] == DECODER_FORMAT
    assert read_decoder_manifest(tmp_path / "sd-vae-ft-mse-256-fp16.plan") == original == read_any_manifest(path)
    assert original.latent_shape == (4, 32, 32) and original.io_shapes()["images"] == (3, 256, 256)


def test_a_transformer_manifest_is_not_taken_for_a_decoders_and_back(tmp_path):
    write_manifest(tmp_path / "dit.onnx", manifest())
    write_manifest(tmp_path / "vae.onnx", decoder_manifest())
    with pytest.raises(DiTError, match="describes a DiT graph, not a VAE decoder: pass it as the file to run"):
        read_decoder_manifest(tmp_path / "dit.onnx")
    with pytest.raises(DiTError, match="describes a VAE decoder .*, not a DiT graph: pass its graph or engine as --vae"):
        read_manifest(tmp_path / "vae.onnx")
    assert isinstance(read_any_manifest(tmp_path / "dit.onnx"), Manifest)
    assert isinstance(read_any_manifest(tmp_path / "vae.onnx"), DecoderManifest)


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.pop("scaling_factor"), "lacks scaling_factor"),
    (lambda m: m.update(image_size=512), "claims fp16 512 px images from 32 x 32 latents"),
    (lambda m: m.update(precision="int8"), "claims int8"),
    (lambda m: m.update(format="dit-deploy-decoder/0"), "is not a dit-deploy-decoder/1 manifest"),
    (lambda m: m.update(vae="mse"), "malformed field"),
])
def test_bad_decoder_manifests_are_named(tmp_path, edit, words):
    record = decoder_manifest().to_dict()
    edit(record)
    (tmp_path / "d.json").write_text(json.dumps(record))
    with pytest.raises(DiTError, match=words):
        read_decoder_manifest(tmp_path / "d.onnx")


def test_decoder_io_must_match_the_file():
    check_decoder_io(decoder_manifest(), {"latents": ("B", 4, 32, 32), "images": ("B", 3, 256, 256)}, "d.onnx")
    with pytest.raises(DiTError, match="d.onnx has .*latents.*64, 64.* but its manifest says"):
        check_decoder_io(decoder_manifest(), {"latents": ("B", 4, 64, 64), "images": ("B", 3, 512, 512)}, "d.onnx")


def test_every_decoder_field_is_documented_in_the_docs():
    text = MANIFEST_PAGE.read_text()
    table = text[text.index("## The decoder manifest"):]
    for name in ["format", *(field.name for field in dataclasses.fields(DecoderManifest))]:
        assert f"| `{name}` |" in table, name
