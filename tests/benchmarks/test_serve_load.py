"""benchmarks/serve_load.py's arithmetic (the load itself needs two services: run the script)."""

from benchmarks.serve_load import percentile, table


def test_percentiles_are_nearest_rank():
    latencies = [float(value) for value in range(1, 101)]  # 1 .. 100 ms
    assert (percentile(latencies, 0.50), percentile(latencies, 0.95)) == (50.0, 95.0)
    assert percentile([7.0], 0.95) == 7.0


def test_the_table_has_one_row_per_setting():
    rows = [{"batching": batching, "max_batch": size, "concurrency": 4, "requests_per_s": 3.456, "p50_ms": 100.4,
             "p95_ms": 130.6, "mean_batch": 3.25} for batching, size in (("on", 8), ("off", 1))]
    lines = table(rows).splitlines()
    assert lines[2] == "| on (--max-batch 8) | 4 | 3.46 | 100 | 131 | 3.2 |"
    assert len(lines) == 4
