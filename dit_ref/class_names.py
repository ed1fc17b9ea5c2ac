"""Class names: labels by name ("golden retriever"), as diffusers' DiTPipeline.get_label_ids offers.

A model's classes have names when they are a data set's we know: ImageNet-1k for the paper's
1000-class models, Fashion-MNIST for the shipped `fashion` model. imagenet_classes.txt holds one
line per class in label order, the WordNet lemmas of the ILSVRC-2012 synsets in sorted synset order
(the labels the released DiT checkpoints use: 207 "golden retriever", 360 "otter"); it was written
from timm 1.0.31's data files timm/data/_info/imagenet_synsets.txt and imagenet_synset_to_lemma.txt
(Apache-2.0). A line's comma-separated synonyms each name the class, as in DiTPipeline; a name is
matched without regard to case or surrounding spaces. A few synonyms name two classes ("crane":
134, the bird, and 517, the machine); those are refused as ambiguous rather than resolved silently
to one of them (diffusers keeps the last).
"""

import difflib
import functools
from pathlib import Path

from dit_ref import configs
from dit_ref.errors import DiTError
from dit_ref.fashion_mnist import CLASS_NAMES as FASHION_NAMES

IMAGENET_FILE = Path(__file__).with_name("imagenet_classes.txt")


@functools.cache
def imagenet_names() -> tuple[str, ...]:
    """The 1000 ImageNet class lines, label order ("tench, Tinca tinca", "goldfish, Carassius auratus", ...)."""
    names = tuple(IMAGENET_FILE.read_text(encoding="utf-8").splitlines())
    if len(names) != configs.NUM_CLASSES:
        raise DiTError(f"{IMAGENET_FILE} holds {len(names)} class names, not {configs.NUM_CLASSES}; reinstall dit-deploy")
    return names


def class_names(model: str, num_classes: int) -> tuple[str, ...] | None:
    """One name line per class of a model (config name and class count), or None where its classes have no
    names here (a DiT trained on other data: its labels are numbers only)."""
    if model == "fashion" and num_classes == len(FASHION_NAMES):
        return FASHION_NAMES
    if model.startswith("DiT-") and num_classes == configs.NUM_CLASSES:
        return imagenet_names()
    return None


def synonyms(line: str) -> list[str]:
    """The names one class line gives: "lesser panda, red panda" -> ["lesser panda", "red panda"]; a
    Fashion-MNIST "T-shirt/top" also answers to "T-shirt" and "top"."""
    names = [name.strip() for name in line.split(",") if name.strip()]
    parts = [part.strip() for name in names if "/" in name for part in name.split("/") if part.strip()]
    return names + parts


@functools.cache
def name_index(names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """lower-case name -> the labels it names (two or more: ambiguous)."""
    index: dict[str, tuple[int, ...]] = {}
    for label, line in enumerate(names):
        for name in synonyms(line):
            key = name.lower()
            if label not in index.get(key, ()):
                index[key] = index.get(key, ()) + (label,)
    return index


def short_name(names: tuple[str, ...], label: int) -> str:
    """A class's first name: 387 -> "lesser panda"."""
    return synonyms(names[label])[0]


def label_from_name(name: str, names: tuple[str, ...], what: str = "class") -> int:
    """The label a class name stands for; DiTError naming the closest names for an unknown one and the
    candidates for an ambiguous one."""
    index = name_index(names)
    found = index.get(name.strip().lower())
    if found is None:
        close = difflib.get_close_matches(name.strip().lower(), index, n=3, cutoff=0.6)
        hint = ", ".join(f"{match!r} ({index[match][0]})" for match in close) or "none near it"
        raise DiTError(f"{what} {name!r} is not a class name of this model (its classes are 0..{len(names) - 1} "
                       f"or their names); closest: {hint}")
    if len(found) > 1:
        choices = ", ".join(f"{label} ({short_name(names, label)})" for label in found)
        raise DiTError(f"{what} {name!r} names {len(found)} classes: {choices}; pass the number instead")
    return found[0]


def resolve_label(value, names: tuple[str, ...] | None, num_classes: int, what: str = "class") -> int:
    """A label given as a number or a name -> its number; DiTError for a name this model has no table for.
    (Numbers are range-checked by the caller, with the rest of the run's options.)"""
    if not isinstance(value, str):
        return value
    if value.strip().isdigit():  # "207": a number written as text, as dit-run --class reads it
        return int(value)
    if names is None:
        raise DiTError(f"{what} {value!r}: this model's classes have no names; pass numbers 0..{num_classes - 1}")
    return label_from_name(value, names, what)
