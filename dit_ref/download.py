"""Fetching checkpoints: the official released files (cached) and diffusers repos on the hub."""

import http.client
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from dit_ref import diffusers_format, files
from dit_ref.configs import DiTConfig, check_image_size
from dit_ref.errors import DiTError

OFFICIAL_URL = "https://dl.fbaipublicfiles.com/DiT/models/{name}"
RELEASED_MODEL = "DiT-XL/2"  # the only config with released weights (256 and 512)
TIMEOUT_SECONDS = 15.0  # per connect / read; short so that an offline machine fails fast
CHUNK_BYTES = 1 << 20
HUB_PROBE_SECONDS = 3.0
OFFLINE_HINT = (
    "offline? download it elsewhere and pass --ckpt PATH, or use --random-init SEED for a "
    "random-weight model"
)


def cache_dir() -> Path:
    """$DIT_CACHE, else ~/.cache/dit-deploy."""
    return Path(os.environ.get("DIT_CACHE") or Path.home() / ".cache" / "dit-deploy")


def official_name(config: DiTConfig, image_size: int) -> str:
    """The released file name: DiT-XL-2-256x256.pt."""
    check_image_size(image_size)
    if config.name != RELEASED_MODEL:
        raise DiTError(
            f"only {RELEASED_MODEL} has released weights, not {config.name}; "
            "use --random-init SEED or pass --ckpt PATH"
        )
    return f"{config.file_stem}-{image_size}x{image_size}.pt"


def official_url(config: DiTConfig, image_size: int) -> str:
    return OFFICIAL_URL.format(name=official_name(config, image_size))


def fetch_official(config: DiTConfig, image_size: int) -> tuple[Path, str]:
    """(cached path, URL) of the released checkpoint, downloading it on first use."""
    url = official_url(config, image_size)
    path = cache_dir() / official_name(config, image_size)
    if not path.is_file():
        download(url, path)
    return path, url


def download(url: str, path: Path) -> Path:
    """Download url to path with a progress bar, via a temporary name in the same folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = files.temporary_beside(path, suffix=".part")
    except OSError as error:
        message = f"cannot write to {path.parent}: {error}; set DIT_CACHE to a writable folder"
        raise DiTError(message) from error
    try:
        with open(temporary, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            _copy_with_progress(response, out, url, path.name)
        files.publish(temporary, path)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise DiTError(f"cannot download {url}: {reason}; {OFFLINE_HINT}") from error
    finally:
        files.discard(temporary)  # nothing left once published
    return path


def _copy_with_progress(response, out, url, name):
    from tqdm import tqdm

    total = int(response.headers.get("Content-Length") or 0) or None
    with tqdm(total=total, unit="B", unit_scale=True, desc=name) as bar:
        while chunk := response.read(CHUNK_BYTES):
            out.write(chunk)
            bar.update(len(chunk))
    if total is not None and out.tell() != total:
        raise DiTError(f"download of {url} stopped at {out.tell()} of {total} bytes; try again")


def hub_offline_reason() -> str | None:
    """Why the Hugging Face hub cannot be asked (then only its local cache is used), or None.

    huggingface_hub retries an unreachable hub for about 25 s with a warning each time; a short
    connection attempt first says so at once.
    """
    from huggingface_hub import constants  # its HF_HUB_OFFLINE and HF_ENDPOINT, as it reads them

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    host, port = endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError as error:
        return f"the hub at {host} is unreachable ({error.strerror or type(error).__name__})"
    return None


def fetch_hub(repo_id: str) -> Path:
    """Local folder of a diffusers DiT repo's transformer (only its config and weights are fetched).

    Uses the Hugging Face cache; only the cache when the hub is unreachable or HF_HUB_OFFLINE is set.
    """
    offline = hub_offline_reason()
    folder = _snapshot(repo_id, "safetensors", offline)
    if not _has_weights(folder):  # repos saved before safetensors only have the .bin
        folder = _snapshot(repo_id, "bin", offline)
    return diffusers_format.find_model_dir(folder)


def _has_weights(folder: Path) -> bool:
    try:
        diffusers_format.weight_files(diffusers_format.find_model_dir(folder))
    except DiTError:
        return False
    return True


def _snapshot(repo_id: str, extension: str, offline: str | None) -> Path:
    from huggingface_hub import errors, snapshot_download

    files = (  # one file, or shards with their index; never the .fp16 variants
        diffusers_format.CONFIG_FILE,
        f"diffusion_pytorch_model.{extension}",
        f"diffusion_pytorch_model-*.{extension}",
        f"diffusion_pytorch_model.{extension}.index.json",
    )
    prefixes = (f"{diffusers_format.PIPELINE_SUBFOLDER}/", "")
    patterns = [f"{prefix}{file}" for prefix in prefixes for file in files]
    hub_errors = (errors.HfHubHTTPError, errors.EntryNotFoundError, errors.HFValidationError, OSError)
    hub_errors += _httpx_errors()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline is not None))
    except hub_errors as error:
        if offline:
            reason = f"{offline} and it is not in the Hugging Face cache"
        else:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            reason = reason.removeprefix("Got: ")  # the hub's "Got: ConnectError: ..." wrapping
        message = f"cannot fetch hf:{repo_id} from the Hugging Face hub: {reason}; {OFFLINE_HINT}"
        raise DiTError(message) from error


def _httpx_errors() -> tuple:
    """httpx's transport errors (huggingface_hub's HTTP client), if httpx is installed."""
    try:
        import httpx
    except ImportError:
        return ()
    return (httpx.HTTPError,)
