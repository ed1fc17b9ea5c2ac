"""A profile written by hand (the form dit-tune writes), for the tests that apply one."""

from pathlib import Path

from dit_ref.contract import read_manifest
from runtime.profile import machine_record, profile_path_for, write_profile


def write_profile_for(graph, points: dict, machine: dict | None = None) -> Path:
    """A profile beside graph with points {name: {"graph", "backend", "load", "sampler", "steps", ...}}."""
    manifest = read_manifest(graph)
    record = {"model": manifest.model, "image_size": manifest.image_size,
              "checkpoint": {"source": manifest.checkpoint.source, "sha256": manifest.checkpoint.sha256},
              "machine": machine or machine_record(),
              "points": {name: {"settings": {"graph": Path(graph).name, "backend": "onnxruntime", "load": {},
                                             "guidance_interval": None, "cache": None, **settings}}
                         for name, settings in points.items()}}
    return write_profile(profile_path_for(graph), record)
