"""Where model files live, and the models the pack knows how to fetch.

Folders:
* inside ComfyUI, the ``sams`` model folders (``models/sams`` plus ``extra_model_paths.yaml``
  entries), handed over by the bridge through :func:`set_folder_provider` (this module never
  imports ComfyUI);
* otherwise ``SAMKIT_MODELS_DIR`` (one folder, or several separated by ``os.pathsep``), or a
  per-user folder: ``%LOCALAPPDATA%\\comfyui-sam-kit\\sams`` on Windows,
  ``$XDG_DATA_HOME/comfyui-sam-kit/sams`` (default ``~/.local/share/...``) elsewhere.

The first folder is where downloads go.

Choice order (:func:`list_model_choices`): files already present first, alphabetically (they
work offline and are what the user put there), then the known models that are not present,
in table order: small and fast first, the big original SAMs last.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

#: extensions listed as model files (what ComfyUI's ``supported_pt_extensions`` holds)
MODEL_EXTENSIONS = (".pt", ".pth", ".safetensors", ".bin", ".ckpt")
ENV_MODELS_DIR = "SAMKIT_MODELS_DIR"


class ModelFileError(ValueError):
    """A model file that exists but cannot be loaded. The message names the file, says what it
    looks like and what to do (``model_files`` raises its subclasses for the file's contents)."""


@dataclass(frozen=True)
class KnownModel:
    """A model the pack can download.

    ``size_bytes``, ``sha256`` and ``git_blob_sha1`` are checked when set. A sha256 is only
    filled in where the publisher states one; ``git_blob_sha1`` is the object id of the file in
    the publisher's own git tree (what GitHub serves for a raw URL at that commit).
    """

    file_name: str
    family: str  # "sam" or "fastsam"
    arch: str  # vit_b, vit_l, vit_h, vit_t, fastsam
    url: str
    licence: str
    description: str
    approx_mb: int  # shown to users; also sizes the progress bar when the server sends no length
    size_bytes: Optional[int] = None
    sha256: Optional[str] = None
    git_blob_sha1: Optional[str] = None
    homepage: str = ""


# Sources (checked 2026-11):
# * SAM: https://github.com/facebookresearch/segment-anything#model-checkpoints links the three
#   dl.fbaipublicfiles.com files; Meta publishes no checksums. The byte sizes are the
#   Content-Length dl.fbaipublicfiles.com serves (e.g. a wget log "Length: 375042383" for vit_b),
#   recorded identically by several independent projects' download manifests.
# * MobileSAM: weights/mobile_sam.pt in https://github.com/ChaoningZhang/MobileSAM, last changed
#   in commit a509aac ("Update for better compability"), git blob 7ef2d090...; the raw URL is
#   pinned to that commit so the blob id stays true. Size: 40.7 MB per the Ultralytics docs
#   (https://docs.ultralytics.com/models/mobile-sam), 40728226 bytes per independent manifests.
# * TinySAM: the README of https://github.com/xinghaochen/TinySAM links release 3.0's
#   tinysam_42.3.pth (a plain state dict of MobileSAM's architecture). No size or checksum is
#   published.
# * FastSAM: Ultralytics hosts FastSAM-s/-x in the ultralytics/assets releases; v8.4.0 is the
#   release ultralytics 8.4 itself downloads them from (the default of
#   ultralytics.utils.downloads.attempt_download_asset). No size or checksum is published, and
#   each assets release may carry a re-saved file, so no size is pinned.
# Files without a published size or checksum are still verified: zip CRCs of the whole archive,
# and the architecture read from the downloaded file must be the one listed here.
KNOWN_MODELS: tuple = (
    KnownModel(
        "mobile_sam.pt", "sam", "vit_t",
        "https://raw.githubusercontent.com/ChaoningZhang/MobileSAM/"
        "a509aac54fdd7af59f843135f2f7cee307283c88/weights/mobile_sam.pt",
        "Apache-2.0",
        "MobileSAM: SAM's prompt encoder and mask decoder with a 5M-parameter TinyViT encoder. Fast on CPU.",
        approx_mb=41, size_bytes=40728226,
        git_blob_sha1="7ef2d090979fd9853adf17b7a99c8b94a1c5a6a7",
        homepage="https://github.com/ChaoningZhang/MobileSAM",
    ),
    KnownModel(
        "tinysam_42.3.pth", "sam", "vit_t",
        "https://github.com/xinghaochen/TinySAM/releases/download/3.0/tinysam_42.3.pth",
        "Apache-2.0",
        "TinySAM (release 3.0): a TinyViT SAM distilled further than MobileSAM; same speed, better masks.",
        approx_mb=41, homepage="https://github.com/xinghaochen/TinySAM",
    ),
    KnownModel(
        "FastSAM-s.pt", "fastsam", "fastsam",
        "https://github.com/ultralytics/assets/releases/download/v8.4.0/FastSAM-s.pt",
        "AGPL-3.0",
        "FastSAM small (YOLOv8s-seg, one class): every object in one pass. Fastest everything mode.",
        approx_mb=24, homepage="https://docs.ultralytics.com/models/fast-sam",
    ),
    KnownModel(
        "FastSAM-x.pt", "fastsam", "fastsam",
        "https://github.com/ultralytics/assets/releases/download/v8.4.0/FastSAM-x.pt",
        "AGPL-3.0",
        "FastSAM large (YOLOv8x-seg, one class): better masks than FastSAM-s, still one pass.",
        approx_mb=145, homepage="https://docs.ultralytics.com/models/fast-sam",
    ),
    KnownModel(
        "sam_vit_b_01ec64.pth", "sam", "vit_b",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "Apache-2.0",
        "Segment Anything ViT-B (Meta): the smallest original SAM.",
        approx_mb=375, size_bytes=375042383,
        homepage="https://github.com/facebookresearch/segment-anything",
    ),
    KnownModel(
        "sam_vit_l_0b3195.pth", "sam", "vit_l",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "Apache-2.0",
        "Segment Anything ViT-L (Meta).",
        approx_mb=1250, size_bytes=1249524607,
        homepage="https://github.com/facebookresearch/segment-anything",
    ),
    KnownModel(
        "sam_vit_h_4b8939.pth", "sam", "vit_h",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "Apache-2.0",
        "Segment Anything ViT-H (Meta): the original and largest; best masks, slowest.",
        approx_mb=2565, size_bytes=2564550879,
        homepage="https://github.com/facebookresearch/segment-anything",
    ),
)

_folder_provider: Optional[Callable[[], Iterable]] = None


def set_folder_provider(provider: Optional[Callable[[], Iterable]]) -> None:
    """Let a host (ComfyUI) say where the model folders are; ``None`` restores the defaults."""
    global _folder_provider
    _folder_provider = provider


def user_models_dir() -> Path:
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "comfyui-sam-kit" / "sams"


def model_dirs() -> list:
    """The folders searched for models, in order; the first receives downloads."""
    if _folder_provider is not None:
        dirs = _unique(Path(p) for p in _folder_provider() if p)
        if dirs:
            return dirs
    env = os.environ.get(ENV_MODELS_DIR, "")
    dirs = _unique(Path(p.strip()).expanduser() for p in env.split(os.pathsep) if p.strip())
    return dirs or [user_models_dir()]


def download_dir() -> Path:
    return model_dirs()[0]


def _unique(paths: Iterable[Path]) -> list:
    seen, out = set(), []
    for path in paths:
        key = os.path.normcase(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out


def known_model(name: str) -> Optional[KnownModel]:
    for model in KNOWN_MODELS:
        if model.file_name == name:
            return model
    return None


def is_model_file_name(name: str) -> bool:
    """A listable model file: a supported extension, not hidden (partial downloads are hidden)."""
    return not name.startswith(".") and name.lower().endswith(MODEL_EXTENSIONS)


def _walk_model_files(folder: Path) -> list:
    """Model files under ``folder`` as POSIX paths relative to it (symlinked folders followed once)."""
    found = []
    visited = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:  # a symlink loop
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel_root = Path(root).relative_to(folder)
        for name in files:
            if is_model_file_name(name) and os.path.isfile(os.path.join(root, name)):
                found.append((rel_root / name).as_posix())
    return found


def installed_models() -> list:
    """Model files present in the folders (sub-folders included), each name once, sorted."""
    names = set()
    for folder in model_dirs():
        if folder.is_dir():
            names.update(_walk_model_files(folder))
    return sorted(names, key=lambda n: (n.lower(), n))


def list_model_choices() -> list:
    """Present files first (alphabetical), then downloadable known models not present (table order)."""
    present = installed_models()
    present_names = set(present)
    return present + [m.file_name for m in KNOWN_MODELS if m.file_name not in present_names]


def _is_explicit_path(name: str) -> bool:
    """A name that can only mean a path: absolute, ``~…``, ``./…``, ``../…`` (either slash)."""
    return (Path(name).is_absolute() or Path(name).drive != "" or name.startswith("~")
            or name in (".", "..") or name.startswith(("./", "../", ".\\", "..\\")))


def _as_model_file(path: Path) -> Path:
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file; give the checkpoint file itself "
                             f"(supported: {', '.join(MODEL_EXTENSIONS)}).")
    return path


def find_model_file(name: str, folders_only: bool = False) -> Optional[Path]:
    """The file a model name means, or ``None``.

    Command line and library (``folders_only=False``), the way a shell reads a path first:

    1. absolute, ``~/…``, ``./…`` and ``../…`` names are paths (relative ones from the current
       folder) and nothing else: never looked up in the model folders;
    2. another relative name (``my_sam.pth``, ``sub/my_sam.pth``) that exists from the current
       folder is that file;
    3. otherwise the first model folder that holds it (sub-folders as listed by
       :func:`installed_models`).

    Inside ComfyUI (``folders_only=True``, the loader node) a name is only ever a file inside a
    model folder: absolute paths, ``~`` and ``..`` that leaves the folder find nothing.

    A folder where a file is expected raises :class:`ModelFileError`.
    """
    name = str(name).strip()
    if not name:
        return None
    given = Path(name)
    if not folders_only:
        path = given.expanduser()
        if _is_explicit_path(name):
            return _as_model_file(path.absolute()) if path.exists() else None
        if path.exists():
            return _as_model_file(path.absolute())
    elif given.is_absolute() or given.drive or name.startswith("~"):
        return None
    for folder in model_dirs():
        path = folder / given
        # a choice never points outside its folder ("../../x" from a hand-edited workflow)
        if not _is_inside(path, folder):
            continue
        if path.exists():
            return _as_model_file(path)
    return None


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(folder))
        return True
    except ValueError:
        return False


def resolve_model_path(name: str, download: bool = True, folders_only: bool = False) -> Path:
    """An existing file wins (:func:`find_model_file`'s rules); a known missing model is
    downloaded into the first model folder; anything else raises ``FileNotFoundError`` saying
    where it looked (or :class:`ModelFileError` for a folder given as a model)."""
    path = find_model_file(name, folders_only)
    if path is not None:
        return path
    name = str(name).strip()
    folders = model_dirs()
    where = ", ".join(str(d) for d in folders)
    if folders_only and (Path(name).is_absolute() or Path(name).drive or name.startswith("~") or ".." in Path(name).parts):
        raise FileNotFoundError(
            f"model {name!r}: inside ComfyUI a model is a file in the model folders ({where}), not a path. "
            "Put the file in one of them and choose it from the list."
        )
    if not folders_only and _is_explicit_path(name):
        raise FileNotFoundError(f"model file {Path(name).expanduser().absolute()} does not exist (given as {name!r}).")
    known = known_model(name)
    if known is not None:
        if download:
            from .download import download_model

            return download_model(known, folders[0])
        raise FileNotFoundError(
            f"model {known.file_name} is not in {where} and downloading is off. "
            f"Download it from {known.url} and put it in {folders[0]}."
        )
    if not folders_only:
        where = f"the current folder ({Path.cwd()}), then {where}"
    known_names = ", ".join(m.file_name for m in KNOWN_MODELS)
    raise FileNotFoundError(
        f"model {name!r} was not found; looked in: {where}. Put the file in one of these folders "
        f"(supported: {', '.join(MODEL_EXTENSIONS)}), or choose a model the pack downloads itself: {known_names}."
    )
