"""Fetching model files: all or nothing.

The body streams into a hidden ``.<name>.part`` file beside the destination (an extension the
model lists ignore), is verified, and only then renamed into place. Any failure or interrupt
deletes the partial file, so a later run never loads half a checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from . import runtime

if TYPE_CHECKING:  # types only: registry imports this module to download what it cannot find
    from .registry import KnownModel

CONNECT_TIMEOUT_S = 1.0  # offline must fail fast, not hang the queue
READ_TIMEOUT_S = 60.0
CHUNK = 1 << 20

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class DownloadError(RuntimeError):
    pass


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(path.resolve()), threading.Lock())


def _manual_hint(model: KnownModel, folder: Path, url: str) -> str:
    return f"Download {model.file_name} by hand from {url} and put it in {folder}."


def verify_checkpoint_file(path: Path, sha256: str | None = None, digest: str | None = None) -> None:
    """Raise if the file is not a complete checkpoint.

    The format is read from the bytes (``model_files.format_of``). Torch checkpoints are zip
    archives whose members carry CRC-32s: ``testzip`` reads every member and catches truncation
    and corruption even where no checksum was published. A safetensors file's header must
    describe exactly the bytes that follow it.
    """
    from .model_files import format_of, safetensors_problem
    from .sniff import describe_head, read_head

    if sha256 is not None and digest is not None and digest.lower() != sha256.lower():
        raise DownloadError(f"checksum mismatch: expected sha256 {sha256}, got {digest}")
    head = read_head(path)
    kind = format_of(path, head)
    if kind == "safetensors":
        problem = safetensors_problem(path)
        if problem is not None:
            raise DownloadError(f"the safetensors file is damaged or incomplete: {problem}")
        return
    if kind == "zip_cut_short":
        raise DownloadError("the archive is cut short (its end is missing)")
    if kind != "torch_zip":
        raise DownloadError(f"the file is not a PyTorch checkpoint but {describe_head(head) or 'unrecognised data'}")
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise DownloadError(f"the archive is damaged (member {bad} fails its CRC check)")


def download_model(model: KnownModel, folder: Path, url: str | None = None) -> Path:
    """Download ``model`` into ``folder`` and return the final path."""
    url = url or model.url
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / model.file_name
    with _lock_for(final):
        if final.is_file():  # another run finished it while we waited
            return final
        part = folder / f".{model.file_name}.part"
        try:
            _fetch(url, part, model, folder)
            os.replace(part, final)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    return final


def _fetch(url: str, part: Path, model: KnownModel, folder: Path) -> None:
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    hasher = hashlib.sha256()
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            if response.status_code != 200:
                raise DownloadError(
                    f"downloading {model.file_name} failed: HTTP {response.status_code} from {url}. "
                    + _manual_hint(model, folder, url)
                )
            expected = int(response.headers.get("content-length") or 0) or None
            bar = runtime.progress(expected or model.approx_mb * (1 << 20), f"downloading {model.file_name}")
            received = 0
            with open(part, "wb") as fh:
                for chunk in response.iter_bytes(CHUNK):
                    runtime.check_interrupt()
                    fh.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.set(received)
            bar.close()
    except httpx.RemoteProtocolError as exc:
        raise DownloadError(
            f"download of {model.file_name} was cut short ({exc}). Run again to retry, or "
            + _manual_hint(model, folder, url)
        ) from exc
    except httpx.TransportError as exc:
        raise DownloadError(
            f"could not download {model.file_name} from {url} ({type(exc).__name__}: {exc}); are you offline? "
            + _manual_hint(model, folder, url)
        ) from exc
    if expected is not None and received != expected:
        raise DownloadError(
            f"download of {model.file_name} was cut short ({received} of {expected} bytes). "
            "Run again to retry, or " + _manual_hint(model, folder, url)
        )
    try:
        verify_checkpoint_file(part, model.sha256, hasher.hexdigest())
    except DownloadError as exc:
        raise DownloadError(f"downloaded {model.file_name} is not usable: {exc}. " + _manual_hint(model, folder, url)) from exc
