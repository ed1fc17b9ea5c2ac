"""benchmarks/serve_load.py's arithmetic and tables (the load itself needs services: run the script)."""

from benchmarks.serve_load import percentile, table


def test_percentiles_are_nearest_rank():
    latencies = [float(value) for value in range(1, 101)]  # 1 .. 100 ms
    assert (percentile(latencies, 0.50), percentile(latencies, 0.95)) == (50.0, 95.0)
    assert percentile([7.0], 0.95) == 7.0


def test_the_table_has_one_row_per_setting():
    rows = [{"mode": "step", "batching": batching, "max_batch": size, "concurrency": 4, "requests_per_s": 3.456,
             "p50_ms": 100.4, "p95_ms": 130.6, "mean_batch": 3.25} for batching, size in (("on", 8), ("off", 1))]
    lines = table(rows).splitlines()
    assert lines[2] == "| step | on (--max-batch 8) | 4 | 3.46 | 100 | 131 | 3.2 |"
    assert len(lines) == 4


def test_the_mixed_table_keeps_each_setting_and_its_overtake_check():
    from benchmarks.serve_load import mixed_table

    row = {"denoiser": "SIMULATED 10 ms", "batching": "step", "requests_per_s": 12.0, "image_steps_per_s": 240.4,
           "short": {"p50_ms": 171.6, "p95_ms": 189.2, "requests_per_s": 11.5},
           "long": {"p50_ms": None, "requests_per_s": 0.5},
           "overtake": {"unloaded_short_ms": 143.0, "loaded_short_ms": [150.0, 160.4], "short_answered_first": True}}
    lines = mixed_table([row]).splitlines()
    assert lines[2] == "| SIMULATED 10 ms | step | 172 | 189 | - | 12.00 (11.50 + 0.50) | 240 | 143 | 160, yes |"
    assert len(lines) == 3 and lines[1].count("|") == lines[0].count("|")
