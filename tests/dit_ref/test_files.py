import os
import stat

import pytest

from dit_ref import files


def test_atomic_write_publishes_with_default_permissions(tmp_path):
    target = tmp_path / "m.json"
    files.write_text_atomic(target, "{}\n")
    mask = os.umask(0)
    os.umask(mask)
    assert target.read_text() == "{}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask  # not mkstemp's private 0600
    assert os.listdir(tmp_path) == ["m.json"]


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "engine.plan"
    files.write_bytes_atomic(target, b"old")
    with pytest.raises(TypeError):
        files.write_bytes_atomic(target, object())  # not a buffer: fails after the temporary exists
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["engine.plan"]


def test_atomic_directory_is_removed_on_interrupt(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(tmp_path / "samples", directory=True) as temporary:
            (temporary / "000000.png").write_bytes(b"x")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
