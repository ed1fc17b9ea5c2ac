"""The step-cost benchmark's own arithmetic and one short run; its figures live in docs/benchmarks.md."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import step_costs  # noqa: E402


def test_the_table_reports_the_ratios():
    row = {"model": "S/2", "backend": "onnxruntime-cpu fp32", "batch": 8, "U=0": 100.0, "U=4": 150.0, "U=8": 210.0,
           "refresh": 220.0, "reuse": 20.0}
    text = step_costs.table([row])
    print(text)
    assert "| S/2 | onnxruntime-cpu fp32 | 8 | 100.0 | 150.0 | 210.0 | 2.10x | 220.0 | 20.0 | 11.0x |" in text


@pytest.mark.slow
def test_a_short_run_measures_every_column(tmp_path):
    row = step_costs.measure("fashion", "onnxruntime", 4, repeats=1, threads=1, work_dir=tmp_path)
    print(row)
    assert all(row[key] > 0 for key in ("U=0", "U=2", "U=4", "refresh", "reuse"))
