"""The JSON manifest beside each graph and engine: what the file holds and how it was made.

DiT-S-2-256-fp16.onnx, its engine DiT-S-2-256-fp16.plan and their manifest DiT-S-2-256-fp16.json
share a stem. Field list: /work/shared/DESIGN.md and the project's common contract.
"""

import datetime
import importlib.metadata
import json
from pathlib import Path

from dit_ref.errors import DiTError
from dit_ref.files import write_text_atomic

FORMAT = "dit-deploy-manifest/1"
REQUIRED_FIELDS = ("model", "image_size", "latent_size", "patch_size", "precision", "cfg_channels",
                   "batch", "graph")


def manifest_path_for(path) -> Path:
    """The manifest of a graph or engine: same directory and stem, suffix .json."""
    return Path(path).with_suffix(".json")


def read_manifest(path) -> dict:
    """The manifest beside a graph or engine (or the manifest itself); DiTError if missing or corrupt."""
    path = Path(path)
    manifest_path = path if path.suffix == ".json" else manifest_path_for(path)
    remedy = "re-export the graph with dit-export to write it"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise DiTError(f"no manifest {manifest_path} beside {path.name}; {remedy}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DiTError(f"manifest {manifest_path} is unreadable ({error}); {remedy}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DiTError(f"{manifest_path} is not a {FORMAT} manifest; {remedy}")
    missing = [field for field in REQUIRED_FIELDS if field not in manifest]
    if missing:
        raise DiTError(f"manifest {manifest_path} lacks {', '.join(missing)}; {remedy}")
    return manifest


def write_manifest(path, manifest: dict) -> Path:
    """Write the manifest for a graph or engine path (or a .json path) atomically; returns its path."""
    path = Path(path)
    manifest_path = path if path.suffix == ".json" else manifest_path_for(path)
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return manifest_path




def package_versions() -> dict:
    """Versions of the packages that shaped a graph (None for a package that is not installed)."""
    versions = {}
    for key, package in (("dit_deploy", "dit-deploy"), ("torch", "torch"), ("onnx", "onnx"),
                         ("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime")):
        try:
            versions[key] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def now_iso() -> str:
    """Current UTC time, ISO 8601, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
