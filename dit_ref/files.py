"""Files: written so that nothing half-written is ever left (a temporary name beside, then a rename), and the
project's JSON files (manifests, profiles) read with one-line errors."""

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from dit_ref.errors import DiTError


HASH_CHUNK_BYTES = 1 << 22
# the random part of tempfile.mkstemp's and mkdtemp's names: CPython's _RandomNameSequence, 8 of [a-z0-9_], a detail
# of its implementation rather than a documented promise; tests/export/test_atomic_write.py reads a real name back
RANDOM_PART = re.compile(r"[a-z0-9_]{8}")


def sha256_of_files(*paths) -> str:
    """Hex sha256 of one file, or of several files' bytes in the given order (sharded checkpoints)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as stream:
            while chunk := stream.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


def temporary_beside(path, directory: bool = False, suffix: str = ".tmp") -> Path:
    """A new hidden file (or directory) in path's folder, so the final rename stays on one filesystem: named
    ".{path's name}.{random}{suffix}" (temporary_for reads such a name back)."""
    path = Path(path)
    if directory:
        return Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix))
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    return Path(name)


def temporary_for(name: str, suffix: str = ".tmp") -> str | None:
    """The final name that a temporary_beside file of this name (made with this suffix) stood for; None if the
    name is not one (a killed run leaves them)."""
    if not (name.startswith(".") and name.endswith(suffix)):
        return None
    final, dot, random = name[1:-len(suffix)].rpartition(".")
    return final if dot and final and RANDOM_PART.fullmatch(random) else None


def publish(temporary: Path, path) -> None:
    """Rename the finished temporary onto path, with the permissions a plain open() would have given."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(temporary, (0o777 if temporary.is_dir() else 0o666) & ~mask)  # mkstemp/mkdtemp made it private
    os.replace(temporary, path)


def discard(temporary: Path) -> None:
    """Remove a temporary file or directory; no error if it is already gone."""
    if temporary.is_dir():
        shutil.rmtree(temporary, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


@contextlib.contextmanager
def atomic_path(path, directory: bool = False, suffix: str = ".tmp"):
    """Yields a temporary path beside path; renamed onto path if the block succeeds, removed if not."""
    temporary = temporary_beside(path, directory, suffix)
    try:
        yield temporary
        publish(temporary, path)
    except BaseException:
        discard(temporary)
        raise


def write_bytes_atomic(path, data) -> None:
    """Write bytes (or any buffer, such as TensorRT's IHostMemory) atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        file.write(memoryview(data))


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def read_json(path, what: str, remedy: str, missing: str | None = None):
    """The JSON value in the file at path; DiTError when it is missing ("no {what} PATH{missing}; remedy") or
    unreadable ("{what} PATH is unreadable (why); remedy")."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DiTError(f"no {what} {path}{missing or ''}; {remedy}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DiTError(f"{what} {path} is unreadable ({error}); {remedy}") from None
