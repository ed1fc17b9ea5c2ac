"""The README's Python API example runs as written (offline, the shipped small model)."""

import contextlib
import io
import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_python_api_example_runs(tmp_path):
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    printed = io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    lines = printed.getvalue().splitlines()
    print("\n".join(lines))
    assert lines[0].startswith("graphs/fashion-28-fp16.onnx 1:8:32 {'eps'")
    assert lines[1] == "0 [0 1 7] (3, 28, 28, 1)"
    assert (tmp_path / "graphs" / "fashion-28-fp16.onnx").is_file()
