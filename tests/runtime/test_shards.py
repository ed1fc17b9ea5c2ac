"""Shards of a bulk run without Ray: the plan, the settings check, atomic writes, exactly-once assembly;
and the pure parts of runtime.scaleout (worker placement, addresses, error lines)."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from dit_ref.errors import DiTError
from runtime.scaleout.cluster import import_ray, local_cpus, parse_address, plan_pool
from runtime.scaleout.job import sample_layout, worker_failure
from runtime.scaleout.shards import ShardCollector, ShardFolder, ShardPlan, settings_hash, shard_name, shards_folder_for

SETTINGS = {"graph_sha256": "ab" * 32, "sampler": "ddim", "steps": 2, "cfg_scale": 4.0, "seed": 0, "decoder": "none"}


class ListOutput:
    def __init__(self):
        self.batches = []

    def add(self, batch):
        self.batches.append(batch)


def folder_with(tmp_path, settings=SETTINGS, n=10, size=4) -> ShardFolder:
    return ShardFolder(shards_folder_for(tmp_path / "out.npy"), settings, ShardPlan(n, size)).claim()


def fill(folder: ShardFolder, shards) -> None:
    for shard in shards:
        index = np.arange(shard.start, shard.stop)
        folder.write(shard, index, index % 3, np.stack([np.full((2, 2), i, np.float32) for i in index]))


def test_the_plan_cuts_shards_then_batches_that_never_cross_a_shard():
    plan = ShardPlan(10, 4)
    assert plan.shards() == [range(0, 4), range(4, 8), range(8, 10)]
    assert plan.batches(plan.shards(), 3) == [range(0, 3), range(3, 4), range(4, 7), range(7, 8), range(8, 10)]
    assert plan.batches(plan.shards()[1:], 2) == [range(4, 6), range(6, 8), range(8, 10)]  # as generate() batches


def test_settings_hash_is_canonical_and_names_carry_it():
    assert settings_hash(SETTINGS) == settings_hash(dict(reversed(list(SETTINGS.items()))))
    assert settings_hash(SETTINGS) != settings_hash({**SETTINGS, "seed": 1})
    assert shard_name("0123456789abcdef", range(8, 10)) == "0123456789abcdef-000000008-000000010.npz"


def test_finished_shards_are_skipped_and_assembled_in_index_order(tmp_path):
    folder = folder_with(tmp_path)
    fill(folder, [range(4, 8)])
    assert folder.finished() == [range(4, 8)] and folder.pending() == [range(0, 4), range(8, 10)]
    again = folder_with(tmp_path)  # the same settings: ours, nothing lost
    fill(again, again.pending())
    output = ListOutput()
    labels = again.assemble(output, (2, 2), np.float32)
    samples = np.concatenate(output.batches)
    assert np.array_equal(samples[:, 0, 0], np.arange(10)) and np.array_equal(labels, np.arange(10) % 3)


def test_a_folder_of_other_settings_is_refused_with_what_differs(tmp_path):
    folder_with(tmp_path)
    with pytest.raises(DiTError, match=r"other settings \(seed 0, not 1\)"):
        folder_with(tmp_path, {**SETTINGS, "seed": 1})


@pytest.mark.parametrize("content", ["stranger.txt", "settings.json"])
def test_a_folder_that_is_not_ours_is_refused(tmp_path, content):
    path = shards_folder_for(tmp_path / "out.npy")
    path.mkdir()
    (path / content).write_text("{}")
    with pytest.raises(DiTError, match="not a dit-run shards"):
        folder_with(tmp_path)


def test_assembly_checks_every_index_exactly_once(tmp_path):
    folder = folder_with(tmp_path)
    fill(folder, folder.plan.shards())
    with pytest.raises(DiTError, match="exactly once"):  # a writer refuses a shard with a repeated index
        folder.write(range(0, 4), np.array([0, 1, 1, 3]), np.zeros(4), np.zeros((4, 2, 2), np.float32))
    bad = folder.path / shard_name(folder.digest, range(0, 4))  # a shard file whose content lies
    with open(bad, "wb") as stream:
        np.savez(stream, index=np.array([0, 1, 1, 3]), label=np.zeros(4), sample=np.zeros((4, 2, 2), np.float32))
    with pytest.raises(DiTError, match="exactly once"):
        folder.assemble(ListOutput(), (2, 2), np.float32)
    bad.unlink()
    with pytest.raises(DiTError, match="missing"):
        folder.assemble(ListOutput(), (2, 2), np.float32)


def test_the_collector_writes_whole_shards_and_drops_repeats(tmp_path):
    folder = folder_with(tmp_path)
    collector = ShardCollector(folder, folder.plan.shards())
    samples = np.arange(10, dtype=np.float32)[:, None]
    assert collector.add([4, 5, 6], [0, 0, 0], samples[4:7]) == 3 and collector.written == []
    assert collector.add([7, 0, 1], [0, 0, 0], samples[[7, 0, 1]]) == 3 and collector.written == [range(4, 8)]
    assert collector.add([6, 7], [0, 0], samples[6:8]) == 0 and collector.repeats == 2  # a retried batch
    with pytest.raises(DiTError, match="incomplete"):
        collector.check_complete()
    collector.add([2, 3, 8, 9], [0] * 4, samples[[2, 3, 8, 9]])
    collector.check_complete()
    assert json.loads((folder.path / "settings.json").read_text())["hash"] == folder.digest


def test_pool_placement_and_the_resources_ray_would_wait_for_forever():
    cpu_node, gpu_node = {"CPU": 3, "GPU": 0}, {"CPU": 8, "GPU": 2}
    assert plan_pool([cpu_node], local_cores=2) == plan_pool([cpu_node], 2, None, 1, 2)  # one per core
    assert plan_pool([cpu_node], workers=1, local_cores=2).threads == 2  # one worker gets the cores
    assert plan_pool([gpu_node, gpu_node]).workers == 4 and plan_pool([gpu_node]).gpus == 1
    assert plan_pool([gpu_node], gpus_per_worker=0.5).workers == 4
    with pytest.raises(DiTError, match="no GPUs"):
        plan_pool([cpu_node], gpus_per_worker=1)
    with pytest.raises(DiTError, match="room for 2"):
        plan_pool([gpu_node], workers=3)
    with pytest.raises(DiTError, match="room for 3"):
        plan_pool([cpu_node], workers=4)


@pytest.mark.parametrize("address, parsed", [
    (None, None), ("local", None), ("auto", "auto"), ("10.0.0.1:6379", "10.0.0.1:6379"),
    ("ray://head:10001", "ray://head:10001"),
])
def test_addresses(address, parsed):
    assert parse_address(address) == parsed


def test_a_graph_taken_for_an_address_says_where_it_goes():
    with pytest.raises(DiTError, match="put ENGINE_OR_GRAPH before --ray"):
        parse_address("graphs/fashion-28-fp16.onnx")


def test_a_worker_failure_becomes_its_own_line():
    text = ("ray::MapWorker.submit() (pid=1)\n  File \"x.py\", line 3\ndit_ref.errors.DiTError: NaN in the latents at "
            "step 3\n\nThe above exception was the direct cause of the following exception:\n\nUserCodeException: UDF")
    assert str(worker_failure(RuntimeError(text))) == "a Ray worker failed: NaN in the latents at step 3"
    assert "ValueError: bad" in str(worker_failure(RuntimeError("trace\nValueError: bad\n")))


def test_dit_run_imports_without_ray():
    code = "import sys, runtime.cli, runtime.scaleout; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_ray_installed_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(DiTError, match=r"pip install 'ray\[data\]'"):
        import_ray()


@pytest.mark.parametrize("vae, decoder, shape, dtype", [
    ("auto", "vae", (256, 256, 3), np.uint8), ("none", "vae", (4, 32, 32), np.float32),
    ("auto", "pixels", (256, 256, 1), np.uint8),  # grayscale pixel models: (N, H, W, 1)
])
def test_the_output_holds_adms_layout(vae, decoder, shape, dtype):
    channels = 1 if decoder == "pixels" else 4
    manifest = SimpleNamespace(image_size=256, latent_size=256 if decoder == "pixels" else 32,
                               latent_channels=channels, decoder=decoder)
    assert sample_layout(vae, manifest) == (shape, dtype)


def test_a_local_instance_declares_the_cpus_or_the_pools_threads_up_to_twice_the_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)  # a 2-CPU machine
    assert local_cpus(None, None) == 3  # the CPUs and a spare one for Ray's own tasks
    assert local_cpus(4, 1) == 5 and local_cpus(2, 2) == 5  # the pool's threads share the 2 CPUs
    with pytest.raises(DiTError, match=r"99 worker\(s\) x 1 thread\(s\) do not fit: this machine has room for 4"):
        local_cpus(99, 1)
    with pytest.raises(DiTError, match=r"3 replica\(s\) x 2 thread\(s\) .* lower --replicas or --threads"):
        local_cpus(3, 2, "replica")
