"""The tuner's measurements: settings sampled on this machine, their pictures kept, their paired fidelity to the
exact point's pictures and their population quality, each measured once and kept (an interrupted run resumes).

Pair i is sample i of every setting: label i mod the class count, per-sample seed (seed, i), so the pictures of
two settings pair up and a setting measured on n pairs is the first n of one measured on more. Pixel models are
compared as uint8 images, latent models as latents (runtime.tuning.fidelity).
"""

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dit_ref.contract import read_manifest
from dit_ref.errors import DiTError
from dit_ref.files import atomic_path, sha256_of_files, temporary_for, write_text_atomic
from runtime.options import OPTIONS
from runtime.tuning import fidelity
from runtime.tuning.costs import CallCosts, measure_costs, predict_seconds
from runtime.tuning.space import Engine, Setting


@dataclass(frozen=True)
class Options:
    """How a tuning run measures."""

    seed: int = 0  # pair i is seeded (seed, i)
    cfg_scale: float = OPTIONS["cfg_scale"].default  # the scale every setting samples with (the user's)
    batch: int = 16  # images per denoiser call
    threads: int | None = None  # CPU threads per denoiser (None: physical cores)

    def conditions(self, folder: Path, engines: list) -> dict:
        """What the kept measurements depend on beside each setting's own key (Store): these options, the sha256 of
        every graph and engine in folder, and the machine and runtime versions they were measured with."""
        from runtime.profile import machine_record

        files = {engine.graph: file_sha256(folder / engine.graph) for engine in engines}
        return {**asdict(self), "graphs": dict(sorted(files.items())), "machine": machine_record()}


def file_sha256(path: Path) -> str:
    """A graph's sha256 as its manifest records it; an engine's, of its own bytes (the manifest's is its graph's)."""
    return sha256_of_files(path) if path.suffix == ".plan" else read_manifest(path).graph.sha256


MOST_LOADED = 2  # engines loaded at once
SAMPLES_NAME = re.compile(r"[0-9a-f]{16}\.npy")  # a setting's kept pictures (Store.samples_path)


def written_by_store(name: str) -> bool:
    """records.json, a setting's pictures, or the temporary of either that a killed run left (atomic_path's)."""
    finals = (name, temporary_for(name), temporary_for(name, ".tmp.npy"))
    return any(final == "records.json" or (final and SAMPLES_NAME.fullmatch(final)) for final in finals)


class Store:
    """What a run measured, kept in a folder (records.json and one .npy of pictures per setting), under the
    conditions it was measured in (seed, cfg scale, batch, threads, the graphs' sha256): kept measurements made
    under others are forgotten, not mixed in."""

    def __init__(self, folder: Path, conditions: dict, echo=print, fresh: bool = False):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "records.json"
        if fresh:
            self.forget()
        self.records = self.read()
        if self.records and self.records.get("conditions") != conditions:
            echo(f"{self.folder.name}: its measurements were made with another seed, cfg scale, batch, thread count, "
                 f"other graphs or on another machine or runtime versions; measuring afresh")
            self.forget()
            self.records = {}
        self.records["conditions"] = conditions

    def forget(self) -> None:
        """Deletes what this store wrote (records.json, its pictures, temporaries a killed run left), nothing else in
        the folder."""
        for kept in self.folder.iterdir():
            if written_by_store(kept.name) and kept.is_file():
                kept.unlink(missing_ok=True)

    def read(self) -> dict:
        if not self.path.is_file():
            return {}
        try:
            return json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DiTError(f"{self.path} is not a dit-tune record ({error}); run again with --fresh") from None

    def get(self, kind: str, key: str):
        return self.records.get(kind, {}).get(key)

    def put(self, kind: str, key: str, value) -> None:
        self.records.setdefault(kind, {})[key] = value
        write_text_atomic(self.path, json.dumps(self.records, indent=1) + "\n")

    def samples_path(self, key: str) -> Path:
        import hashlib

        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"  # (SAMPLES_NAME)


class Tuner:
    """Loads the engines, samples and scores settings, keeps every measurement in its Store."""

    def __init__(self, graph: Path, options: Options, store: Store, echo=print):
        self.graph, self.options, self.store, self.echo = Path(graph), options, store, echo
        self.manifest = read_manifest(graph)
        self.pixels = self.manifest.decoder == "pixels"
        self.loaded: dict[str, object] = {}

    # --- engines -------------------------------------------------------------------------------------------

    def denoiser(self, engine: Engine):
        """The engine's denoiser, kept loaded with the MOST_LOADED - 1 used last (each holds its sessions, cached-steps
        pair and arenas: a large model's six engines at once do not fit in memory)."""
        from runtime.backends import load_denoiser

        if engine.key in self.loaded:
            self.loaded[engine.key] = self.loaded.pop(engine.key)  # the most recently used last
        else:
            while len(self.loaded) >= MOST_LOADED:
                self.loaded.pop(next(iter(self.loaded))).close()
            self.loaded[engine.key] = load_denoiser(self.graph.parent / engine.graph, engine.backend,
                                                    threads=self.options.threads, **dict(engine.load))
        return self.loaded[engine.key]

    def close(self) -> None:
        for denoiser in self.loaded.values():
            denoiser.close()
        self.loaded.clear()

    def batch(self, engine: Engine) -> int:
        return min(self.options.batch, self.denoiser(engine).batch_range.max)

    def costs(self, engine: Engine) -> CallCosts:
        """ms per call of the engine by kind (measured once)."""
        found = self.store.get("costs", engine.key)
        if found is None:
            costs = measure_costs(self.denoiser(engine), self.batch(engine), engine.cached_steps)
            found = asdict(costs)
            self.store.put("costs", engine.key, found)
        return CallCosts(found["batch"], {kind: tuple(ms) for kind, ms in found["ms"].items()})

    def predicted_seconds(self, setting: Setting) -> float:
        options = setting.call_options
        return predict_seconds(self.costs(setting.engine), setting.timesteps, setting.interval, options.cache)

    # --- pictures ------------------------------------------------------------------------------------------

    def labels(self, n: int) -> list[int]:
        return [i % self.manifest.num_classes for i in range(n)]

    def kept(self, setting: Setting) -> int:
        """How many of the setting's samples are made and kept."""
        path = self.store.samples_path(setting.key)
        return len(np.load(path, mmap_mode="r")) if path.is_file() else 0

    def seconds_to_sample(self, setting: Setting, n: int) -> float:
        """Predicted seconds to have the setting's first n samples (those kept cost nothing)."""
        return max(0, n - self.kept(setting)) * self.predicted_seconds(setting)

    def samples(self, setting: Setting, n: int) -> np.ndarray:
        """The setting's first n samples (N, C, L, L) float32 as generate() gives them without a decoder (a pixel
        model's are its pictures in [-1, 1]), made once."""
        path = self.store.samples_path(setting.key)
        kept = np.load(path) if path.is_file() else None
        if kept is not None and len(kept) >= n:
            return kept[:n]
        start = 0 if kept is None else len(kept)
        made, seconds = self.make(setting, start, n)
        pictures = made if kept is None else np.concatenate([kept, made])
        with atomic_path(path, suffix=".tmp.npy") as temporary:
            np.save(temporary, pictures)
        timed = self.store.get("seconds", setting.key) or {"images": 0, "seconds": 0.0}
        self.store.put("seconds", setting.key, {"images": timed["images"] + n - start,
                                                "seconds": timed["seconds"] + seconds})
        return pictures

    def make(self, setting: Setting, start: int, stop: int) -> tuple[np.ndarray, float]:
        """Pictures start..stop-1 of the setting and the wall seconds they took."""
        from runtime.generate import generate

        denoiser = self.denoiser(setting.engine)
        if setting.cache is not None:
            denoiser.cached_forms()  # loaded (once) before the clock starts: a setting is timed, not its loading
        begun = time.perf_counter()
        batches = list(generate(denoiser, self.labels(stop)[start:], seed=self.options.seed, seeding="per-sample",
                                first_index=start, cfg_scale=self.options.cfg_scale,
                                batch_size=min(self.batch(setting.engine), stop - start), **setting.request))
        return np.concatenate([batch.samples for batch in batches]), time.perf_counter() - begun  # (n, C, L, L)

    def seconds_per_image(self, setting: Setting) -> float | None:
        """Measured wall seconds per image over every picture this run made of the setting (None: none made)."""
        timed = self.store.get("seconds", setting.key)
        return None if not timed or not timed["images"] else timed["seconds"] / timed["images"]

    # --- scores --------------------------------------------------------------------------------------------

    def pairs(self, setting: Setting, reference: Setting, n: int) -> dict[str, np.ndarray]:
        """Per-pair PSNR and SSIM of the setting's first n samples against the reference's: as uint8 images (the
        files dit-run writes) for a pixel model, as latents for a latent model."""
        from runtime.vae import pixels_from_images

        candidate, wanted = self.samples(setting, n), self.samples(reference, n)
        if not self.pixels:
            return fidelity.latent_pairs(candidate, wanted)
        return fidelity.image_pairs(*(pixels_from_images(torch.from_numpy(x)) for x in (candidate, wanted)))

    def mse(self, setting: Setting, reference: Setting, n: int) -> np.ndarray:
        """(n,) each pair's mean squared error relative to its peak squared (1 / 10^(PSNR/10)): what adds."""
        return 10.0 ** (-self.pairs(setting, reference, n)["psnr"] / 10.0)

    def fidelity(self, setting: Setting, reference: Setting, n: int) -> dict:
        """The summary (runtime.tuning.fidelity.summarise) of the pairs, kept."""
        key = f"{setting.key} || {reference.key} || {n}"
        found = self.store.get("fidelity", key)
        if found is None:
            found = fidelity.summarise(self.pairs(setting, reference, n))
            self.store.put("fidelity", key, found)
        return found

    def knows_population(self, setting: Setting, n: int) -> bool:
        return self.store.get("population", f"{setting.key} || {n}") is not None

    def population(self, setting: Setting, judge, n: int) -> dict:
        """The judge's class accuracy and Fréchet distance of the setting's first n samples, with intervals."""
        from runtime.tuning.judge import score

        key = f"{setting.key} || {n}"
        found = self.store.get("population", key)
        if found is None:
            found = score(judge, self.samples(setting, n), self.labels(n), resamples=1000, seed=self.options.seed)
            self.store.put("population", key, found)
        return found


def require_graph(path) -> Path:
    """The graph or engine dit-tune was given; DiTError when it is not a DiT graph with a manifest."""
    path = Path(path)
    if not path.is_file():
        raise DiTError(f"{path} not found; pass an engine (.plan) or graph (.onnx) made by dit-export")
    read_manifest(path)
    return path
