"""Resumable shards of a bulk run: the plan, the settings check, atomic shard files, the final assembly.

A run of N samples is cut into shards of `shard_size` consecutive sample indices. Each finished
shard is one file in `<out>.shards/`, written atomically and named by the run's settings hash and
its index range, beside the settings themselves:

    samples.npz.shards/settings.json                             what made these shards (and its hash)
    samples.npz.shards/3f2a9c1e04b7d6a1-000000000-000001024.npz  index, label, sample of 0..1023

Running the same command again skips the shards that exist; a folder made with other settings (or
one that is not a shards folder at all) is refused. At the end the shards are read in index order
into the final file, checking that every index 0..N-1 is there exactly once. Nothing here needs Ray.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dit_ref import files
from dit_ref.errors import DiTError

FORMAT = "dit-deploy-shards/1"
SETTINGS_FILE = "settings.json"
DEFAULT_SHARD_SIZE = 1024  # a multiple of every power-of-two batch size up to 1024 (see ShardPlan.batches)


def settings_hash(settings: dict) -> str:
    """16 hex digits of the sha256 of the settings' canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def labels_digest(labels) -> str:
    """sha256 of a run's planned labels (None: drawn from the sample's own generator)."""
    return hashlib.sha256(json.dumps([None if y is None else int(y) for y in labels]).encode()).hexdigest()


def shards_folder_for(out) -> Path:
    """`<out>.shards` beside the output file."""
    out = Path(out).expanduser()
    return out.with_name(out.name + ".shards")


@dataclass(frozen=True)
class ShardPlan:
    """How N sample indices are cut into shards, and shards into denoiser batches."""

    num_samples: int
    shard_size: int

    def __post_init__(self):
        if self.num_samples < 1 or self.shard_size < 1:
            raise DiTError(f"a run needs at least one sample and a shard size of at least 1, not "
                           f"{self.num_samples} samples in shards of {self.shard_size}")

    def shards(self) -> list[range]:
        """Consecutive index ranges covering 0..N-1; all of shard_size but the last."""
        n, size = self.num_samples, self.shard_size
        return [range(start, min(start + size, n)) for start in range(0, n, size)]

    def batches(self, shards, batch_size: int) -> list[range]:
        """The denoiser batches of these shards: batch_size consecutive indices, never across a shard's end.

        When batch_size divides shard_size these are the batches one machine's generate() makes, so a
        sample comes out bitwise the same whichever worker (or machine) runs its batch.
        """
        return [range(start, min(start + batch_size, shard.stop))
                for shard in shards for start in range(shard.start, shard.stop, batch_size)]


def shard_name(digest: str, shard: range) -> str:
    return f"{digest}-{shard.start:09d}-{shard.stop:09d}.npz"


SHARD_NAME = re.compile(r"^([0-9a-f]{16})-(\d{9})-(\d{9})\.npz$")


class ShardFolder:
    """`<out>.shards/` for one run's settings: which shards are done, writing one, reading them back."""

    def __init__(self, path: Path, settings: dict, plan: ShardPlan):
        self.path, self.settings, self.plan = Path(path), settings, plan
        self.digest = settings_hash(settings)

    def check(self) -> bool:
        """True if the folder exists and is ours (same settings), False if it does not exist yet;
        DiTError if it is not a shards folder or holds shards of other settings. Writes nothing."""
        record_path = self.path / SETTINGS_FILE
        if not self.path.exists():
            return False
        if not self.path.is_dir():
            raise DiTError(f"{self.path} exists and is not a folder; remove it or choose another --out")
        if not record_path.exists():
            if any(not entry.name.startswith(".") for entry in self.path.iterdir()):
                raise DiTError(f"{self.path} is not a dit-run shards folder (no {SETTINGS_FILE}); "
                               f"move it away or choose another --out")
            return False
        try:
            record = json.loads(record_path.read_text())
            theirs = record["settings"] if record.get("format") == FORMAT else None
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            theirs = None
        if not isinstance(theirs, dict):
            raise DiTError(f"{record_path} is not a dit-run shards record; move {self.path} away or choose "
                           f"another --out")
        if settings_hash(theirs) != self.digest:
            raise DiTError(f"{self.path} holds shards made with other settings ({differences(theirs, self.settings)}); "
                           f"rerun with those settings to resume, or delete the folder to start over")
        return True

    def claim(self) -> "ShardFolder":
        """Create the folder with our settings record unless it is already ours (check() first)."""
        if not self.check():
            self.path.mkdir(exist_ok=True)
            record = {"format": FORMAT, "hash": self.digest, "settings": self.settings}
            files.write_text_atomic(self.path / SETTINGS_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return self

    def finished(self) -> list[range]:
        """The planned shards whose files exist (their contents are checked when assembling)."""
        names = {entry.name for entry in self.path.iterdir()} if self.path.is_dir() else set()
        return [shard for shard in self.plan.shards() if shard_name(self.digest, shard) in names]

    def pending(self) -> list[range]:
        done = {shard.start for shard in self.finished()}
        return [shard for shard in self.plan.shards() if shard.start not in done]

    def write(self, shard: range, index: np.ndarray, labels: np.ndarray, samples: np.ndarray) -> Path:
        """Write one complete shard atomically (index must be exactly the shard's range, in order)."""
        check_indices(index, shard, f"shard {shard.start}..{shard.stop - 1}")
        path = self.path / shard_name(self.digest, shard)
        with files.atomic_path(path) as temporary, open(temporary, "wb") as stream:
            np.savez(stream, index=np.asarray(index, np.int64), label=np.asarray(labels, np.int64), sample=samples)
        return path

    def read(self, shard: range) -> dict[str, np.ndarray]:
        """One shard's arrays; DiTError if it is unreadable or does not hold exactly its indices."""
        path = self.path / shard_name(self.digest, shard)
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in ("index", "label", "sample")}
        except (OSError, ValueError, KeyError, EOFError) as error:
            raise DiTError(f"shard {path} is unreadable ({type(error).__name__}); delete it and rerun to redo "
                           f"its samples") from None
        check_indices(arrays["index"], shard, str(path))
        return arrays

    def assemble(self, output, sample_shape: tuple, dtype) -> np.ndarray:
        """Every shard in index order into output (anything with .add(batch)); returns the labels.

        Checks that the shards cover 0..N-1 with every index exactly once and that every sample has
        sample_shape and dtype.
        """
        missing = self.pending()
        if missing:
            raise DiTError(f"{len(missing)} shard(s) of {self.path} are missing (first: samples "
                           f"{missing[0].start}..{missing[0].stop - 1}); rerun the same command to make them")
        labels = []
        for shard in self.plan.shards():
            arrays = self.read(shard)
            samples = arrays["sample"]
            if samples.shape[1:] != tuple(sample_shape) or samples.dtype != np.dtype(dtype):
                raise DiTError(f"shard {shard_name(self.digest, shard)} holds {samples.dtype} samples of shape "
                               f"{samples.shape[1:]}, not {np.dtype(dtype)} {tuple(sample_shape)}; delete {self.path}")
            output.add(samples)
            labels.append(arrays["label"])
        return np.concatenate(labels)

    def remove(self) -> None:
        """Delete the folder (after a successful assembly)."""
        files.discard(self.path)


def check_indices(index, shard: range, where: str) -> None:
    """DiTError unless index holds every index of shard exactly once, in order."""
    index = np.asarray(index)
    if index.shape != (len(shard),) or not np.array_equal(index, np.arange(shard.start, shard.stop)):
        raise DiTError(f"{where} holds indices other than {shard.start}..{shard.stop - 1} exactly once each; "
                       f"delete it and rerun to redo its samples")


def differences(theirs: dict, ours: dict, limit: int = 3) -> str:
    """"seed 1, not 0; steps ..." for the settings that differ (at most `limit`)."""
    keys = sorted(set(theirs) | set(ours))
    changed = [f"{key} {theirs.get(key)!r}, not {ours.get(key)!r}" for key in keys if theirs.get(key) != ours.get(key)]
    more = f"; and {len(changed) - limit} more" if len(changed) > limit else ""
    return "; ".join(changed[:limit]) + more


class ShardCollector:
    """Gathers finished samples (in any order, from any worker) and writes each shard once it is whole.

    A sample that arrives twice (a batch retried after its worker died) is counted and dropped.
    """

    def __init__(self, folder: ShardFolder, shards: list[range]):
        self.folder = folder
        self.open = {shard.start: shard for shard in shards}  # shards still being filled
        self.buffers: dict[int, dict[int, tuple]] = {start: {} for start in self.open}
        self.written: list[range] = []
        self.repeats = 0  # samples received more than once

    def add(self, index, labels, samples) -> int:
        """Take one block of samples; returns how many were new. Writes the shards this completes."""
        new = 0
        for k, i in enumerate(np.asarray(index).tolist()):
            start = i - i % self.folder.plan.shard_size
            buffer = self.buffers.get(start)
            if buffer is None or i in buffer:
                if start not in self.open and not any(s.start == start for s in self.written):
                    raise DiTError(f"internal: sample {i} belongs to no shard of this run")
                self.repeats += 1
                continue
            buffer[i] = (labels[k], samples[k])
            new += 1
            if len(buffer) == len(self.open[start]):
                self._write(self.open.pop(start), self.buffers.pop(start))
        return new

    def _write(self, shard: range, buffer: dict) -> None:
        order = sorted(buffer)
        self.folder.write(shard, np.array(order), np.array([buffer[i][0] for i in order]),
                          np.stack([buffer[i][1] for i in order]))
        self.written.append(shard)

    def check_complete(self) -> None:
        if self.open:
            first = min(self.open)
            raise DiTError(f"the run ended with {len(self.open)} shard(s) incomplete (first: samples from {first}, "
                           f"{len(self.buffers[first])} of {len(self.open[first])} in); rerun the same command")
