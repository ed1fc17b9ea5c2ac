"""Every offline command in docs/ runs as written: the fenced blocks marked ```sh offline, each page's in order,
in one scratch directory per page (so a page's later commands use what its earlier ones made), with the
project's console scripts on PATH. A command that fails, or runs past its time, fails the test."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dit_ref.machine.cpu import cpu_summary

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```sh offline\n(.*?)^```", re.S | re.M)
SECONDS_PER_COMMAND = 240


def offline_commands(page: Path) -> list[str]:
    """The page's offline commands, one per line (a trailing backslash continues a line)."""
    text = "\n".join(BLOCK.findall(page.read_text()))
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]


PAGES = sorted(page for page in DOCS.glob("*.md") if offline_commands(page))


def test_the_pages_that_need_checking_have_commands():
    assert {page.stem for page in PAGES} >= {"models", "export", "sampling", "scale-out"}


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[page.stem for page in PAGES])
def test_offline_commands_run(page, tmp_path):
    # faulthandler: a crash in a native library (a signal) prints the Python stack it happened under
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                   "HF_HUB_OFFLINE": "1", "PYTHONFAULTHANDLER": "1"}
    for command in offline_commands(page):
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=environment, capture_output=True, text=True,
                              timeout=SECONDS_PER_COMMAND)
        print(f"$ {command}\n{done.stderr[-1500:]}")
        assert done.returncode == 0, (f"{page.name}: `{command}` exited {done.returncode} on {cpu_summary()}:\n"
                                      f"{done.stdout[-500:]}{done.stderr[-3000:]}")
