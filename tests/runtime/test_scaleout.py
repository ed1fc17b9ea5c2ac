"""Generation on Ray Data (a local instance on 127.0.0.1, CPU): the same samples from 1 or 2 workers and
from one machine, a killed worker, an interrupted run resumed, and one-line errors for bad input.

One Ray instance serves the whole file (starting one takes seconds); every test is bounded in time.
The model is a tiny random DiT (2 blocks, width 64, 16 tokens) written as latents (--vae none) after
2 DDIM steps, in ONNX Runtime with one thread per worker.
"""

import os
import signal

import numpy as np
import pytest

from runtime.scaleout.cluster import LOOPBACK_ENV
from runtime.scaleout.job import CRASH_FILE_ENV

os.environ.setdefault(LOOPBACK_ENV, "0")  # before Ray is imported: the instance listens on 127.0.0.1 only
ray = pytest.importorskip("ray", reason="needs Ray Data: pip install 'ray[data]' (in the dev extra)")

import runtime.cli as cli  # noqa: E402
from dit_ref.errors import DiTError  # noqa: E402
from runtime.backends import load_denoiser  # noqa: E402
from runtime.generate import generate  # noqa: E402
from runtime.sampling import sampler_from_name  # noqa: E402
from runtime.plan import make_plan  # noqa: E402
from runtime.scaleout.job import Job, RayOptions, run_on_ray  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own settings

NUM_SAMPLES, SHARD_SIZE, BATCH_SIZE, STEPS, SEED = 10, 4, 2, 2, 3
LABELS = (1, None, 7, None, 3, None, None, 9, 0, None)
BATCH_SIZE_TOLERANCE = 1e-5  # relative: ONNX Runtime's kernels may block a batch of 3 unlike one of 2
SECONDS_PER_TEST = 90


class TookTooLong(BaseException):
    """Raised by the alarm; a BaseException so that no handler on the way turns it into something else."""


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory):
    """A random DiT-T/8-like model at 256 px (latents 4 x 32 x 32), exported once for this file."""
    import dit_ref
    from dit_ref import DiTConfig
    from export.onnx_export import export_onnx

    model = dit_ref.DiT(DiTConfig(family="T", depth=2, hidden_size=64, num_heads=4, patch_size=8), 256)
    model = dit_ref.randomize_weights_(model, 0).eval()
    checkpoint = {"source": "random init (seed 0)", "sha256": None, "random_weights": True}
    return export_onnx(model, tmp_path_factory.mktemp("tiny-graph"), "fp32", checkpoint=checkpoint)


@pytest.fixture(scope="module")
def tiny_cached_graph(tmp_path_factory):
    """The tiny model with its cached-steps refresh and reuse graphs beside it (dit-export --cached-steps)."""
    import dit_ref
    from dit_ref import DiTConfig
    from dit_ref.contract import read_manifest, write_manifest
    from export.onnx_export import export_onnx

    model = dit_ref.DiT(DiTConfig(family="T", depth=2, hidden_size=64, num_heads=4, patch_size=8), 256)
    model = dit_ref.randomize_weights_(model, 0).eval()
    folder, checkpoint = tmp_path_factory.mktemp("tiny-cached"), {"source": "random init (seed 0)", "sha256": None,
                                                                   "random_weights": True}
    graphs = {role: export_onnx(model, folder, "fp32", checkpoint=checkpoint, role=role)
              for role in ("guided", "refresh", "reuse")}
    manifest = read_manifest(graphs["guided"])
    write_manifest(graphs["guided"], manifest.replace(cached_steps={r: graphs[r].name for r in ("refresh", "reuse")}))
    return graphs["guided"]


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    """A local Ray instance for the file; yields the crash file a worker removes before it dies (tests arm it)."""
    import logging

    crash_file = tmp_path_factory.mktemp("crash") / "armed"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CRASH_FILE_ENV, str(crash_file))  # workers inherit the driver's environment
        patch.setenv("OMP_NUM_THREADS", "1")
        ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False)
        try:
            yield crash_file
        finally:
            ray.shutdown()


@pytest.fixture(autouse=True)
def time_limit():
    def expire(signum, frame):
        raise TookTooLong(f"over {SECONDS_PER_TEST} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(SECONDS_PER_TEST)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def one_machine(tiny_graph):
    """The samples generate() makes on this machine with per-sample seeding, batch 2: the reference."""
    with load_denoiser(tiny_graph, threads=1) as denoiser:
        batches = generate(denoiser, list(LABELS), sampler_from_name("ddim", STEPS), seed=SEED,
                           batch_size=BATCH_SIZE, seeding="per-sample")
        return np.concatenate([batch.samples for batch in batches])


def ray_run(graph, out, seed=SEED, batch_size=BATCH_SIZE, on_shard=None, guidance_interval=None, cache=None,
            steps=STEPS, **options):
    plan = make_plan(LABELS, sampler="ddim", steps=steps, seed=seed, seeding="per-sample", batch_size=batch_size,
                     decoder="none", guidance_interval=guidance_interval, cache=cache)
    options = {"shard_size": SHARD_SIZE, "threads": 1, **options}
    summary = run_on_ray(Job(path=str(graph), plan=plan), out, RayOptions(**options), progress=False,
                         on_shard=on_shard)
    print(summary.describe())
    return summary


def test_one_and_two_workers_give_one_machines_samples_bitwise(ray_instance, tiny_graph, one_machine, tmp_path):
    for workers in (1, 2):
        summary = ray_run(tiny_graph, tmp_path / f"w{workers}.npy", workers=workers)
        assert summary.images == NUM_SAMPLES and len(summary.per_worker) == workers  # every worker had work
        assert np.array_equal(np.load(tmp_path / f"w{workers}.npy"), one_machine)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["w1.npy", "w2.npy"]  # shards removed


def test_a_guidance_interval_run_equals_one_machines_per_sample_run(ray_instance, tiny_graph, tmp_path):
    interval = "100:600"  # DDIM 2 calls at t 500 (guided) and 0 (not)
    with load_denoiser(tiny_graph, threads=1) as denoiser:
        batches = generate(denoiser, list(LABELS), sampler_from_name("ddim", STEPS), seed=SEED, batch_size=BATCH_SIZE,
                           seeding="per-sample", guidance_interval=interval)
        expected = np.concatenate([batch.samples for batch in batches])
    ray_run(tiny_graph, tmp_path / "interval.npy", workers=2, guidance_interval=interval)
    assert np.array_equal(np.load(tmp_path / "interval.npy"), expected)


def test_a_cache_policy_run_equals_one_machines_per_sample_run(ray_instance, tiny_cached_graph, tmp_path):
    with load_denoiser(tiny_cached_graph, threads=1) as denoiser:
        batches = generate(denoiser, list(LABELS), sampler_from_name("ddim", 8), seed=SEED, batch_size=BATCH_SIZE,
                           seeding="per-sample", cache="fora:2")
        expected = np.concatenate([batch.samples for batch in batches])
    ray_run(tiny_cached_graph, tmp_path / "cached.npy", workers=2, cache="fora:2", steps=8)
    assert np.array_equal(np.load(tmp_path / "cached.npy"), expected)


def test_another_batch_size_gives_the_same_samples_within_tolerance(ray_instance, tiny_graph, one_machine, tmp_path):
    ray_run(tiny_graph, tmp_path / "b3.npy", workers=2, batch_size=3)  # batches 3,1,3,1,2: every shape differs
    samples = np.load(tmp_path / "b3.npy")
    error = np.abs(samples - one_machine).max() / np.abs(one_machine).max()
    print(f"batch 3 vs batch 2, per-sample seeding, 2 DDIM steps: max rel err {error:.2e}")
    assert error < BATCH_SIZE_TOLERANCE


def test_a_killed_worker_is_restarted_and_its_batch_retried(ray_instance, tiny_graph, one_machine, tmp_path):
    ray_instance.write_text("the first worker to see this file removes it and dies (os._exit)")
    summary = ray_run(tiny_graph, tmp_path / "crash.npy", workers=2)
    assert not ray_instance.exists(), "no worker died"
    assert summary.images == NUM_SAMPLES  # counted by index: each exactly once
    assert np.array_equal(np.load(tmp_path / "crash.npy"), one_machine)


def test_an_interrupted_run_resumes_to_the_same_file(ray_instance, tiny_graph, one_machine, tmp_path):
    out = tmp_path / "resumed.npy"

    def interrupt(shard):
        raise KeyboardInterrupt  # Ctrl-C after the first finished shard

    with pytest.raises(DiTError, match="interrupted: .* run the same command again to resume"):
        ray_run(tiny_graph, out, workers=1, on_shard=interrupt)
    shards = sorted(path.name for path in (tmp_path / "resumed.npy.shards").iterdir() if path.suffix == ".npz")
    assert not out.exists() and 1 <= len(shards) < 3
    with pytest.raises(DiTError, match=r"other settings \(.*seed 3, not 4"):  # refused before Ray is touched
        ray_run(tiny_graph, out, workers=1, seed=4)
    summary = ray_run(tiny_graph, out, workers=2)
    assert summary.skipped == SHARD_SIZE * len(shards) and summary.images == NUM_SAMPLES - summary.skipped
    assert np.array_equal(np.load(out), one_machine) and not (tmp_path / "resumed.npy.shards").exists()


def dit_run(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    return exited.value.code, capsys.readouterr().err


def test_dit_run_ray_writes_adms_npz_layout(ray_instance, tiny_graph, tiny_vae_dir, capsys, tmp_path):
    out = tmp_path / "samples.npz"
    code, err = dit_run([str(tiny_graph), "--num-samples", "3", "--sampler", "ddim", "--steps", "1", "--vae",
                         str(tiny_vae_dir), "--out", str(out), "--threads", "1", "--workers", "1", "--ray"], capsys)
    print(err)
    assert code == 0 and "3 samples in" in err and "RANDOM WEIGHTS" in err
    with np.load(out) as archive:
        assert archive.files == ["arr_0"] and archive["arr_0"].shape == (3, 256, 256, 3)
        assert archive["arr_0"].dtype == np.uint8


@pytest.mark.parametrize("options, words", [
    (["--ray", "127.0.0.1:1"], ["cannot reach a Ray cluster at 127.0.0.1:1"]),
    (["--gpus-per-worker", "1", "--ray"], ["no GPUs", "forever"]),
    (["--workers", "99", "--ray"], ["99 worker(s)", "room for"]),
    (["--seeding", "official", "--ray"], ["per-sample seeding"]),
    (["--workers", "2"], ["--workers is for --ray runs"]),
    (["--ray", "--out", "grid.png"], ["grid.png"]),
])
def test_bad_input_is_one_line(ray_instance, tiny_graph, capsys, tmp_path, monkeypatch, options, words):
    monkeypatch.chdir(tmp_path)
    code, err = dit_run([str(tiny_graph), "--num-samples", "2", "--vae", "none", *options], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    print(err)
    assert code == 1 and len(lines) == 1 and "Traceback" not in err
    assert all(word in lines[0] for word in words)
    assert not any(path.name.endswith(".shards") for path in tmp_path.iterdir())


def test_a_failure_inside_the_workers_is_one_line_and_leaves_nothing(ray_instance, tiny_graph, capsys, tmp_path):
    not_a_vae = tmp_path / "not-a-vae"
    not_a_vae.mkdir()  # passes the driver's check (a directory); every worker then fails to load it
    code, err = dit_run([str(tiny_graph), "--num-samples", "2", "--vae", str(not_a_vae), "--out",
                         str(tmp_path / "s.npz"), "--workers", "1", "--ray"], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and lines == [lines[0]] and "a Ray worker failed: cannot load a diffusers VAE" in lines[0]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["not-a-vae"]


def test_a_graph_after_ray_is_taken_for_its_address_and_said_so(ray_instance, tiny_graph, capsys):
    code, err = dit_run(["--ray", str(tiny_graph), "--num-samples", "2"], capsys)
    assert code == 1 and "put ENGINE_OR_GRAPH before --ray" in err


def test_a_shards_folder_that_is_not_ours_is_refused(ray_instance, tiny_graph, capsys, tmp_path):
    (tmp_path / "samples.npy.shards").mkdir()
    (tmp_path / "samples.npy.shards" / "holiday.jpg").write_bytes(b"\xff\xd8")
    code, err = dit_run([str(tiny_graph), "--num-samples", "2", "--vae", "none", "--out",
                         str(tmp_path / "samples.npy"), "--ray"], capsys)
    assert code == 1 and "not a dit-run shards folder" in err
    assert (tmp_path / "samples.npy.shards" / "holiday.jpg").exists()


def test_dit_run_per_sample_on_one_machine_writes_what_dit_run_ray_writes(ray_instance, tiny_graph, capsys, tmp_path):
    common = [str(tiny_graph), "--num-samples", str(NUM_SAMPLES), "--seed", str(SEED), "--sampler", "ddim",
              "--steps", str(STEPS), "--batch-size", str(BATCH_SIZE), "--vae", "none", "--threads", "1"]
    code, err = dit_run([*common, "--seeding", "per-sample", "--out", str(tmp_path / "one.npy")], capsys)
    assert code == 0, err
    code, err = dit_run([*common, "--ray", "--workers", "2", "--shard-size", str(SHARD_SIZE),
                         "--out", str(tmp_path / "ray.npy")], capsys)
    assert code == 0, err
    one, ray_made = np.load(tmp_path / "one.npy"), np.load(tmp_path / "ray.npy")
    assert one.shape == (NUM_SAMPLES, 4, 32, 32) and np.array_equal(one, ray_made)


def test_dit_run_ray_decodes_on_a_decoder_graph_as_one_machine_does(ray_instance, tiny_graph, exported_decoder, capsys,
                                                                    tmp_path):
    common = [str(tiny_graph), "--num-samples", "3", "--sampler", "ddim", "--steps", "1", "--vae",
              str(exported_decoder("fp16").graph), "--threads", "1"]
    code, err = dit_run([*common, "--seeding", "per-sample", "--out", str(tmp_path / "one.npz")], capsys)
    assert code == 0, err
    code, err = dit_run([*common, "--ray", "--workers", "1", "--out", str(tmp_path / "ray.npz")], capsys)
    assert code == 0, err
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "ray.npz") as ray_made:
        assert one["arr_0"].shape == (3, 256, 256, 3) and np.array_equal(one["arr_0"], ray_made["arr_0"])


def test_a_ray_run_with_a_profile_is_the_ray_run_spelled_out(ray_instance, tiny_cached_graph, capsys, tmp_path):
    from profile_helpers import write_profile_for

    write_profile_for(tiny_cached_graph, {"quick": {"sampler": "ddim", "steps": 3, "cache": "fora:2"}})
    common = [str(tiny_cached_graph), "--num-samples", "4", "--vae", "none", "--threads", "1", "--workers", "1",
              "--seed", "2", "--ray"]
    code, err = dit_run([*common, "--profile", "quick", "--out", str(tmp_path / "profiled.npy")], capsys)
    print(err)
    assert code == 0 and "profile quick" in err
    code, _ = dit_run([*common, "--backend", "onnxruntime", "--sampler", "ddim", "--steps", "3", "--cache", "fora:2",
                       "--out", str(tmp_path / "spelled.npy")], capsys)
    assert code == 0 and np.array_equal(np.load(tmp_path / "profiled.npy"), np.load(tmp_path / "spelled.npy"))
