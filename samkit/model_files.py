"""Reading model files by their contents, and saying clearly what is wrong with the ones that fail.

A file's format is read from its first bytes, never from its name, so every extension the
loader lists (``.pt .pth .safetensors .bin .ckpt``) holds any format:

* safetensors (an 8-byte header length, then a JSON header): ``safetensors.torch.load_file``;
* a PyTorch zip archive (``torch.save``): weights-only ``torch.load``; one whose pickle names
  ultralytics' classes is a FastSAM/YOLO file, loaded by ultralytics (:func:`is_ultralytics`);
* a legacy (pre-1.6) PyTorch pickle: weights-only ``torch.load``.

Anything else, and any of those that fails, raises one :class:`~.model_errors.ModelFileError`
subclass whose message names the file, says what it looks like (:func:`describe`) and what to
do (:func:`advice`: for the pack's known models, the download URL and the folder):
:class:`DamagedCheckpoint` for files that are empty, cut short, corrupt or an error page saved
in place of the file; :class:`UnsupportedCheckpoint` for readable files of another kind (other
networks, SAM 2 of an unknown size, HQ-SAM, pickled Python objects, images, ...). Raw library errors are not
chained (``from None``) so nodes show the one message.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import torch

from . import catalogue
from .model_errors import DamagedCheckpoint, ModelFileError, UnsupportedCheckpoint
from .sniff import describe_head, read_head

#: what the pack loads, for "what to do" messages
SUPPORTED = ("SAM Kit loads SAM vit_b/l/h, MobileSAM, TinySAM and SAM 2/2.1 checkpoints (state dicts in "
             ".pth/.pt/.safetensors) "
             "and FastSAM files saved by ultralytics")
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # pickled 0x1950a86a20f9469cfc6c, protocol 2


def advice(path: Path, damaged: bool) -> str:
    """What to do about ``path``: a known model's URL and folder, else how to get a usable file."""
    known = catalogue.known_model(path.name)
    if known is not None:
        return (f"Delete it and choose {known.file_name} again to download it, or download it by hand from "
                f"{known.url} and put it in {path.parent}.")
    if damaged:
        return "Delete it and download it again (or export it again) from where it came from."
    return f"{SUPPORTED}; choose such a file, e.g. mobile_sam.pt, which the pack downloads itself."


def damaged(path: Path, looks: str) -> DamagedCheckpoint:
    return DamagedCheckpoint(f"{path} {looks}, so it cannot be loaded. {advice(path, True)}", looks)


def unsupported(path: Path, looks: str) -> UnsupportedCheckpoint:
    return UnsupportedCheckpoint(f"{path} {looks}. {advice(path, False)}", looks)


# ---------------------------------------------------------------- formats


def _safetensors_header_length(head: bytes) -> int | None:
    """The header length if ``head`` starts like a safetensors file, else ``None``."""
    if len(head) < 10:
        return None
    (length,) = struct.unpack("<Q", head[:8])
    return length if 2 <= length < (1 << 27) and head[8:9] == b"{" else None


def format_of(path: Path, head: bytes | None = None) -> str:
    """``"safetensors"``, ``"torch_zip"``, ``"zip_cut_short"``, ``"torch_legacy"``, ``"pickle"``, ``"empty"``
    or ``"other"``, from the first bytes."""
    head = read_head(path) if head is None else head
    if not head:
        return "empty"
    if _safetensors_header_length(head) is not None:
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "torch_zip" if zipfile.is_zipfile(path) else "zip_cut_short"
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return "torch_legacy"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return "other"


def describe(head: bytes) -> str:
    looks = describe_head(head)
    return f"is {looks}, not model weights" if looks else "is not in a model format SAM Kit knows (unrecognised binary data)"


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's layout (``None``: its header parses and its
    tensors fill the file exactly, as the format requires), without reading the tensors."""
    size = path.stat().st_size
    length = _safetensors_header_length(read_head(path))
    if length is None or size < 8 + length:
        return "its header is damaged or incomplete"
    try:
        header = json.loads(read_head(path, 8 + length)[8:])
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError):
        return "its header is damaged"
    if 8 + length + end != size:
        return f"it is {size} bytes but its header describes {8 + length + end}"
    return None


def is_ultralytics(path: Path) -> bool:
    """A complete zip whose pickle names ultralytics' classes (how ultralytics saves FastSAM/YOLO)."""
    if format_of(path) != "torch_zip":
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return any(b"ultralytics" in archive.read(n) for n in pickles)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False  # read_state_dict says what is wrong with it


def _zip_problem(path: Path, check_crc: bool = True) -> str | None:
    """Why a zip that torch could not read failed: a damaged member, not a checkpoint, or TorchScript."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip() if check_crc else None  # reads every byte: only once loading failed
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError):
        return "damaged"
    if bad is not None:
        return "damaged"
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if not any(n.endswith("data.pkl") for n in names):
        return "not_torch"
    return None


def read_state_dict(path: Path) -> dict:
    """The tensors of a SAM-family checkpoint (``{name: Tensor}``), whatever the file is called.

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}``. Raises :class:`DamagedCheckpoint` or
    :class:`UnsupportedCheckpoint` naming ``path``.
    """
    head = read_head(path)
    kind = format_of(path, head)
    if kind == "empty":
        raise damaged(path, "is empty (0 bytes)")
    if kind == "zip_cut_short":
        raise damaged(path, "is a PyTorch checkpoint (zip archive) that is damaged or incomplete: its end is missing")
    if kind == "other":
        looks = describe_head(head)
        if looks is None or looks.startswith(("an HTML", "a text", "a JSON", "a Git LFS")):  # a failed download
            raise damaged(path, describe(head))
        raise unsupported(path, describe(head))
    if kind == "safetensors":
        data = _load_safetensors(path)
    elif kind == "torch_zip" and _zip_problem(path, check_crc=False) == "torchscript":
        # before torch.load, which would hand a TorchScript archive to torch.jit.load
        raise unsupported(path, "is a TorchScript archive (torch.jit.save), not a state dict")
    else:
        data = _torch_load(path, kind)
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if isinstance(data, torch.Tensor):
        raise unsupported(path, "holds a single tensor, not a state dict (a name → tensor mapping)")
    if not isinstance(data, dict) or not data:
        held = "an empty dict" if isinstance(data, dict) else type(data).__name__
        raise unsupported(path, f"holds {held}, not a state dict of tensors")
    others = sorted(f"{k} ({type(v).__name__})" for k, v in data.items() if not isinstance(v, torch.Tensor))
    if others:
        raise unsupported(path, f"holds Python values other than tensors ({', '.join(others[:4])}"
                                f"{' …' if len(others) > 4 else ''}), not a state dict of tensors")
    return data


def _load_safetensors(path: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ModelFileError(f"{path} is a safetensors file, and reading it needs the safetensors package: "
                             "pip install safetensors (it is in the pack's requirements.txt).") from None
    try:
        return load_file(str(path))
    except Exception:  # SafetensorError and friends: header or data not where the header says
        problem = safetensors_problem(path) or "it could not be read"
        raise damaged(path, f"is a safetensors file that is damaged or incomplete: {problem}") from None


def _torch_load(path: Path, kind: str) -> object:
    try:
        if path.name.lower().endswith(".safetensors"):  # torch.load would pick its loader by this name
            with open(path, "rb") as fh:
                return torch.load(fh, map_location="cpu", weights_only=True)
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds here; sort them by what the file is
        problem = _zip_problem(path) if kind == "torch_zip" else None
        if problem == "damaged":
            raise damaged(path, "is a PyTorch checkpoint (zip archive) that is damaged or incomplete: "
                                "a member fails its CRC check") from None
        if problem == "torchscript":
            raise unsupported(path, "is a TorchScript archive (torch.jit.save), not a state dict") from None
        if problem == "not_torch":
            raise unsupported(path, "is a zip archive that is not a PyTorch checkpoint") from None
        if kind == "pickle":
            raise unsupported(path, "is a plain Python pickle, not a PyTorch checkpoint") from None
        if "weights only load failed" in str(exc).lower():
            raise unsupported(path, "holds pickled Python objects other than tensors (a whole saved model or "
                                    "training state?); it is not a plain state dict") from None
        raise damaged(path, f"is a PyTorch checkpoint that is damaged or incomplete ({type(exc).__name__})") from None


# ---------------------------------------------------------------- FastSAM (ultralytics)


def _first_line(exc: BaseException) -> str:
    text = str(exc).replace("ERROR ❌️", "").strip()
    return (text.splitlines() or [""])[0][:200]


def load_fastsam(path: Path):
    """An ``ultralytics.FastSAM`` on ``path`` (a file :func:`is_ultralytics` accepted), whatever
    its name ends with; raises :class:`UnsupportedCheckpoint` for non-segmentation models.

    Ultralytics pickles whole modules (no weights-only format exists for them), and reads only
    names ending in ``.pt`` as its checkpoints (``Model._load``; ``torch_safe_load`` asserts the
    suffix): any other name is taken for an exported model and left unloaded (the field report:
    ``'str' object has no attribute 'parameters'``); it also drops ``'`` from paths and reads
    ``?``/``%`` as URL syntax. Other names and such paths are handed to it under a ``.pt``
    name in a private temporary folder: a symbolic link (no copy), else a hard link, else a
    copy; the loaded runner then points back at ``path``.
    """
    from ultralytics import FastSAM

    try:
        # ultralytics also rewrites the path as a URL (drops ' and what follows ?, unquotes %xx)
        if path.name.lower().endswith(".pt") and not any(c in str(path) for c in "'?%"):
            runner = FastSAM(str(path))
        else:
            runner = _fastsam_under_pt_name(FastSAM, path)
    except Exception as exc:  # ultralytics raises TypeError/AttributeError/RuntimeError/... for bad files
        if _zip_problem(path) == "damaged":
            raise damaged(path, "is an ultralytics checkpoint (zip archive) that is damaged or incomplete: "
                                "a member fails its CRC check") from None
        raise unsupported(path, f"is an ultralytics file that FastSAM cannot load ({type(exc).__name__}: "
                                f"{_first_line(exc)})") from None
    task = getattr(runner, "task", None)
    if task != "segment":
        raise unsupported(path, f"is an ultralytics {task} model, not a segmentation (-seg) model like FastSAM")
    return runner


def _fastsam_under_pt_name(FastSAM, path: Path):
    import os
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="samkit-fastsam-") as tmp:
        alias = Path(tmp) / "weights.pt"
        for make in (os.symlink, os.link, shutil.copyfile):  # symlinks need a privilege on Windows
            try:
                make(path.resolve(), alias)
                break
            except OSError:
                alias.unlink(missing_ok=True)
        runner = FastSAM(str(alias))  # reads the whole checkpoint now; nothing reads the alias later
    runner.ckpt_path = runner.model_name = str(path)
    runner.overrides["model"] = str(path)
    if hasattr(runner.model, "pt_path"):
        runner.model.pt_path = str(path)
    return runner
