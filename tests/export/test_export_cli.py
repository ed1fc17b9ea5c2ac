"""dit-export end to end on a tiny model, its one-line errors, and --list-models."""

import json
import re
from pathlib import Path

import pytest
import torch

from dit_ref import configs
from export.cli import main
from testing_utils import random_model


def run(capsys, *argv):
    """(exit code, stdout, stderr) of dit-export argv."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_export_random_fp16_with_engine_auto(tmp_path, capsys):
    code, out, err = run(capsys, "--model", "S/8", "--random-init", "0", "--fp16", "--batch", "1:4:16",
                         "--out", str(tmp_path / "graphs"))
    print(out)
    graph = tmp_path / "graphs" / "DiT-S-8-256-fp16.onnx"
    assert code == 0 and err == ""
    assert "RANDOM WEIGHTS" in out
    errors = [float(value) for value in re.findall(r"max rel err ([0-9.e+-]+)", out)]
    assert len(errors) == 2 and max(errors) <= 1e-2  # the check stage ran and passed
    manifest = json.loads(graph.with_suffix(".json").read_text())
    assert manifest["checkpoint"]["random_weights"] is True
    assert manifest["batch"] == {"min": 1, "opt": 4, "max": 16} and manifest["precision"] == "fp16"
    skipped = [line for line in out.splitlines() if line.startswith("engine skipped: ")]
    assert len(skipped) == 1 and skipped[0].endswith(f"run the graph meanwhile with: dit-run {graph} --class 207")
    assert sorted(path.name for path in graph.parent.iterdir()) == [graph.stem + ".json", graph.name]


def fails_cleanly(capsys, out_dir, *argv):
    """Assert one line on stderr, exit 1, and nothing written; returns the message."""
    code, _, err = run(capsys, *argv, "--out", str(out_dir))
    print(err.strip())
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert "Traceback" not in err
    assert not out_dir.exists() or not any(out_dir.iterdir())
    return err


def test_unknown_model(tmp_path, capsys):
    assert "unknown model 'Q/3'" in fails_cleanly(capsys, tmp_path / "out", "--model", "Q/3", "--random-init", "0")


def test_unsupported_image_size(tmp_path, capsys):
    err = fails_cleanly(capsys, tmp_path / "out", "--model", "S/8", "--image-size", "300", "--random-init", "0")
    assert "image size 300" in err


def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    err = fails_cleanly(capsys, tmp_path / "file" / "out", "--model", "S/8", "--random-init", "0")
    assert "not a directory" in err


def test_unwritable_out(capsys):
    err = fails_cleanly(capsys, Path("/proc/dit-export-test"),
                        "--model", "S/8", "--random-init", "0")
    assert "not writable" in err


def test_checkpoint_of_another_model(tmp_path, capsys):
    checkpoint = tmp_path / "s8.pt"
    torch.save(random_model("S/8", 256, 0).state_dict(), checkpoint)
    err = fails_cleanly(capsys, tmp_path / "out", "--model", "S/4", "--ckpt", str(checkpoint))
    assert "S/8" in err


def test_engine_required_fails_before_any_work(tmp_path, capsys):
    from export.engine import engine_unavailable_reason

    if engine_unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are present here")
    err = fails_cleanly(capsys, tmp_path / "out", "--model", "S/8", "--random-init", "0", "--engine", "required")
    assert "--engine required" in err


def test_bad_batch_and_usage_errors(tmp_path, capsys):
    assert "MIN:OPT:MAX" in fails_cleanly(capsys, tmp_path / "out", "--model", "S/8", "--random-init", "0",
                                          "--batch", "8")
    assert "min <= opt <= max" in fails_cleanly(capsys, tmp_path / "out", "--model", "S/8", "--random-init", "0",
                                                "--batch", "4:2:8")
    code, _, err = run(capsys, "--no-such-option")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_list_models_matches_counts(capsys):
    code, out, _ = run(capsys, "--list-models")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert code == 0 and len(rows) == len(configs.all_configs()) == 13  # the paper's 12 and the shipped fashion
    fashion = configs.get_config("fashion")
    assert rows["fashion"][1:6] == ["6", "128", "4", "4", f"{configs.param_count(fashion, 28) / 1e6:.2f}"]
    assert rows["fashion"][9:] == ["1", "10", "pixels,", "28", "px"]  # channels, classes, decoder, size
    for config in configs.CONFIGS.values():
        row = rows[config.short_name]
        expected = [f"{configs.param_count(config, 256) / 1e6:.2f}", f"{configs.param_count(config, 512) / 1e6:.2f}",
                    f"{configs.gflops(config, 256):.2f}", f"{configs.gflops(config, 512):.2f}"]
        assert row[5:9] == expected, config.name
    assert rows["XL/2"][5] == "675.13"  # paper, Table 1 / dit_numerics.md: XL/2 at 256 has 675.13M


@pytest.mark.parametrize("kind", ["truncated", "png", "text"])
def test_corrupt_or_foreign_checkpoint(tmp_path, capsys, kind):
    checkpoint = tmp_path / "ckpt.pt"
    torch.save(random_model("S/8", 256, 0).state_dict(), checkpoint)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes({"truncated": data[: len(data) // 2], "png": b"\x89PNG\r\n\x1a\n" + data[:64],
                            "text": b"hello, not weights\n"}[kind])
    err = fails_cleanly(capsys, tmp_path / "out", "--model", "S/8", "--ckpt", str(checkpoint))
    assert "ckpt.pt" in err and ("corrupt" in err or "not a DiT checkpoint" in err)


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_a_real_dit_export_prints_its_stage_lines_only(tmp_path, verbose):
    """In a shell, not in-process: the libraries' logs go to the real stderr there (pytest captures them)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "export.cli", "--model", "S/8", "--random-init", "0", "--fp16", "--engine",
               "skip", "--out", str(tmp_path), *(["--verbose"] if verbose else [])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    lines = (done.stdout + done.stderr).splitlines()
    print(f"dit-export{' --verbose' if verbose else ''}: {len(lines)} lines")
    assert done.returncode == 0, done.stderr
    if verbose:
        assert len(lines) > 25  # the exporter's and optimizer's own logs
    else:
        assert len(lines) <= 25 and done.stderr == "", done.stderr
