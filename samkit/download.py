"""Fetching model files: all or nothing, and only the file the catalogue lists.

The body streams into a hidden ``.<name>.part`` file beside the destination (an extension the
model lists ignore) while the digests the catalogue entry asks for are computed, so the bytes
are hashed in the one pass that writes them. Then the checks run, in this order, and only a
file that passes all of them is renamed into place:

1. length: every byte the server announced (``Content-Length``) arrived;
2. size: exactly ``KnownModel.size_bytes``, when listed;
3. git blob id: ``KnownModel.git_blob_sha1``, when listed: sha1 of ``b"blob <size>\\0"`` and the
   bytes, the id ``git hash-object`` prints (a raw GitHub URL pinned to a commit serves that blob);
4. sha256: ``KnownModel.sha256``, when listed;
5. format: a PyTorch zip archive whose every member passes its CRC-32, or a safetensors file
   whose header describes exactly the bytes that follow (:func:`verify_checkpoint_file`);
   this catches truncation and corruption where no size or checksum is published;
6. architecture: read from the contents the way the loader reads it, it must be the entry's
   ``family``/``arch``: an ultralytics pickle is FastSAM, and for a FastSAM entry ultralytics
   must load it as a segmentation model (``model_files.load_fastsam``); a SAM 2 state dict's
   ``sam2_config.detect_sam2_config(...).arch`` (sam2.1_hiera_t/s/b+/l), anything else is a SAM
   whose ``sam_config.detect_sam_config(...).arch`` is the entry's (vit_b/l/h, vit_t). So a
   FastSAM file served as ``mobile_sam.pt``, or a ViT-B served as ``mobile_sam.pt``, is refused.
   (This reads the whole state dict once more, freed before the loader reads it.)

Any failure, failed check or interrupt (``runtime.Interrupted``) deletes the partial file, so a
later run never loads half a checkpoint, or another model under a known model's name. Failures
raise :class:`DownloadError` naming the file, the URL, the check and what to do.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from pathlib import Path

import httpx

from . import runtime
from .catalogue import KnownModel
from .model_errors import ModelFileError
from .model_files import format_of, is_ultralytics, load_fastsam, read_state_dict, safetensors_problem
from .loaded_model import FASTSAM_FAMILY, SAM2_FAMILY, SAM_FAMILY
from .sam2_config import detect_sam2_config, is_sam2
from .sam_config import detect_sam_config
from .sniff import describe_head, read_head

CONNECT_TIMEOUT_S = 1.0  # offline must fail fast, not hang the queue
READ_TIMEOUT_S = 60.0
CHUNK = 1 << 20

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class DownloadError(RuntimeError):
    """A download that failed or failed a check; the message names the file, the URL, what went
    wrong and what to do."""


class _CheckFailed(Exception):
    def __init__(self, check: str, detail: str):
        super().__init__(detail)
        self.check = check


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(path.resolve()), threading.Lock())


def _manual_hint(model: KnownModel, folder: Path, url: str) -> str:
    return f"Download {model.file_name} by hand from {url} and put it in {folder}."


def _retry_hint(model: KnownModel, folder: Path, url: str) -> str:
    return "Run again to retry, or d" + _manual_hint(model, folder, url)[1:]


def verify_checkpoint_file(path: Path) -> None:
    """Raise :class:`DownloadError` (the problem alone) if the file is not a complete checkpoint.

    The format is read from the bytes (``model_files.format_of``). Torch checkpoints are zip
    archives whose members carry CRC-32s: ``testzip`` reads every member and catches truncation
    and corruption even where no checksum was published. A safetensors file's header must
    describe exactly the bytes that follow it.
    """
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
    """Download ``model`` into ``folder``, check it (the module docstring's list) and return the
    final path. Raises :class:`DownloadError`; ``runtime.Interrupted`` passes through. Either
    way nothing is left in ``folder``."""
    url = url or model.url
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / model.file_name
    with _lock_for(final):
        if final.is_file():  # another run finished it while we waited
            return final
        part = folder / f".{model.file_name}.part"
        try:
            digests = _fetch(url, part, model, folder)
            try:
                _check(part, model, digests)
            except _CheckFailed as exc:
                raise DownloadError(f"downloaded {model.file_name} from {url} failed the {exc.check} check: {exc}. "
                                    + _what_to_do(exc.check, model, folder, url)) from None
            os.replace(part, final)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    return final


def _what_to_do(check: str, model: KnownModel, folder: Path, url: str) -> str:
    if check == "architecture":
        return ("The file at that address is not the model SAM Kit lists under this name (the catalogue may be out of "
                "date: please report it). " + _manual_hint(model, folder, model.homepage or url))
    return ("The server sent other bytes than the ones SAM Kit lists (a changed upload, a proxy or a captive "
            "portal?). " + _retry_hint(model, folder, url))


def _fetch(url: str, part: Path, model: KnownModel, folder: Path) -> dict:
    """Stream ``url`` into ``part``; returns the digests ``model`` lists checks for, and the size."""
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    hashers = {}
    if model.git_blob_sha1 is not None:  # KnownModel insists on size_bytes with it: the header is known now
        hashers["git blob id"] = hashlib.sha1(b"blob %d\0" % model.size_bytes, usedforsecurity=False)
    if model.sha256 is not None:
        hashers["sha256"] = hashlib.sha256()
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            if response.status_code != 200:
                raise DownloadError(
                    f"downloading {model.file_name} failed: HTTP {response.status_code} from {url}. "
                    + _manual_hint(model, folder, url)
                )
            expected = int(response.headers.get("content-length") or 0) or None
            total = expected or model.size_bytes or model.approx_mb * (1 << 20)
            bar = runtime.progress(total, f"downloading {model.file_name}")
            received = 0
            with open(part, "wb") as fh:
                for chunk in response.iter_bytes(CHUNK):
                    runtime.check_interrupt()
                    fh.write(chunk)
                    for hasher in hashers.values():
                        hasher.update(chunk)
                    received += len(chunk)
                    bar.set(received)
            bar.close()
    except httpx.RemoteProtocolError as exc:
        raise DownloadError(
            f"download of {model.file_name} from {url} was cut short ({exc}). " + _retry_hint(model, folder, url)
        ) from exc
    except httpx.TransportError as exc:
        raise DownloadError(
            f"could not download {model.file_name} from {url} ({type(exc).__name__}: {exc}); are you offline? "
            + _manual_hint(model, folder, url)
        ) from exc
    if expected is not None and received != expected:
        raise DownloadError(
            f"download of {model.file_name} from {url} was cut short ({received} of {expected} bytes). "
            + _retry_hint(model, folder, url)
        )
    return {"size": received, **{name: hasher.hexdigest() for name, hasher in hashers.items()}}


def _check(part: Path, model: KnownModel, digests: dict) -> None:
    """Checks 2-6 of the module docstring; raises :class:`_CheckFailed` at the first that fails."""
    if model.size_bytes is not None and digests["size"] != model.size_bytes:
        raise _CheckFailed("size", f"it is {digests['size']} bytes, the catalogue lists {model.size_bytes}")
    for check, listed in (("git blob id", model.git_blob_sha1), ("sha256", model.sha256)):
        if listed is not None and digests[check] != listed.lower():
            raise _CheckFailed(check, f"checksum mismatch: expected {listed}, got {digests[check]}")
    try:
        verify_checkpoint_file(part)
    except DownloadError as exc:
        raise _CheckFailed("format", str(exc)) from None
    expected = _architecture_name(model.family, model.arch)
    try:
        if is_ultralytics(part):
            if model.family == FASTSAM_FAMILY:
                load_fastsam(part)  # refuses YOLO models of other tasks (detection, pose, ...)
            family, arch = FASTSAM_FAMILY, "fastsam"
        else:
            state = read_state_dict(part)
            if is_sam2(state):
                family, arch = SAM2_FAMILY, detect_sam2_config(state, model.file_name).arch
            else:
                family, arch = SAM_FAMILY, detect_sam_config(state, model.file_name).arch
            del state
    except ModelFileError as exc:  # read_state_dict names the hidden .part file: say what it is instead
        found = f"it {exc.looks}" if exc.looks else str(exc)
        raise _CheckFailed("architecture", f"the catalogue lists {expected}, but {found}") from None
    if (family, arch) != (model.family, model.arch):
        found = ("an ultralytics checkpoint (FastSAM or another YOLO)" if family == FASTSAM_FAMILY
                 else _architecture_name(family, arch))
        raise _CheckFailed("architecture", f"the catalogue lists {expected}, but its contents are {found}")


def _architecture_name(family: str, arch: str) -> str:
    if family == SAM2_FAMILY:
        return f"a SAM 2 {arch} checkpoint"
    return "a FastSAM checkpoint (ultralytics YOLO-seg)" if family == FASTSAM_FAMILY else f"a SAM {arch} checkpoint"
