"""dit-run --ray: bulk generation on Ray Data. job.py is the run (driver and workers), shards.py the resumable
shard files (no Ray), cluster.py the connection to Ray and the placement of a worker pool (also dit-serve's)."""
