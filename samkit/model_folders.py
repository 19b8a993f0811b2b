"""Where model files live, and finding a model file by name in them.

Folders:
* inside ComfyUI, the ``sams`` model folders (``models/sams`` plus ``extra_model_paths.yaml``
  entries), handed over by the bridge through :func:`set_folder_provider` (this module never
  imports ComfyUI);
* otherwise ``SAMKIT_MODELS_DIR`` (one folder, or several separated by ``os.pathsep``), or a
  per-user folder: ``%LOCALAPPDATA%\\comfyui-sam-kit\\sams`` on Windows,
  ``$XDG_DATA_HOME/comfyui-sam-kit/sams`` (default ``~/.local/share/...``) elsewhere.

The first folder is where downloads go.

Choice order (:func:`list_model_choices`): files already present first, alphabetically (they
work offline and are what the user put there), then the catalogue's models that are not
present, in catalogue order (``catalogue.KNOWN_MODELS``: small and fast first, the big original
SAMs last). Finding a missing model by downloading it is ``model_source``'s.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional

from . import catalogue
from .model_errors import ModelFileError

#: extensions listed as model files (what ComfyUI's ``supported_pt_extensions`` holds)
MODEL_EXTENSIONS = (".pt", ".pth", ".safetensors", ".bin", ".ckpt")
ENV_MODELS_DIR = "SAMKIT_MODELS_DIR"


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
    return present + [m.file_name for m in catalogue.KNOWN_MODELS if m.file_name not in present_names]


def is_explicit_path(name: str) -> bool:
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
        if is_explicit_path(name):
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
