"""Where models live and which ones the pack knows how to fetch.

Inside ComfyUI the folders are the ``sams`` model folders (``models/sams`` plus any
``extra_model_paths.yaml`` entries); the bridge hands them over with ``set_folder_provider``.
Outside ComfyUI: ``SAMKIT_MODELS_DIR`` (several folders separated by ``os.pathsep``) or a
per-user folder. Downloads go to the first folder.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

MODEL_EXTENSIONS = (".pt", ".pth", ".safetensors", ".bin", ".ckpt")


@dataclass(frozen=True)
class KnownModel:
    file_name: str
    family: str  # "sam" or "fastsam"
    arch: str
    url: str
    approx_mb: int
    licence: str
    description: str
    #: only where the publisher states one; none of these publishers does, so downloads are
    #: verified by length, zip CRCs and a successful architecture check instead
    sha256: Optional[str] = None


# URLs are the publishers' own:
#   SAM: https://github.com/facebookresearch/segment-anything#model-checkpoints
#   MobileSAM: https://github.com/ChaoningZhang/MobileSAM (weights/mobile_sam.pt in the repo)
#   TinySAM: https://github.com/xinghaochen/TinySAM (release asset linked from its README)
#   FastSAM: ultralytics' asset releases (ultralytics.utils.downloads.GITHUB_ASSETS_NAMES)
KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel("mobile_sam.pt", "sam", "vit_t",
               "https://raw.githubusercontent.com/ChaoningZhang/MobileSAM/master/weights/mobile_sam.pt",
               40, "Apache-2.0", "MobileSAM: SAM's decoder with a 5M-parameter TinyViT encoder. Fast on CPU."),
    KnownModel("tinysam_42.3.pth", "sam", "vit_t",
               "https://github.com/xinghaochen/TinySAM/releases/download/3.0/tinysam_42.3.pth",
               40, "Apache-2.0", "TinySAM (release 3.0): distilled TinyViT SAM."),
    KnownModel("FastSAM-s.pt", "fastsam", "fastsam",
               "https://github.com/ultralytics/assets/releases/download/v8.3.0/FastSAM-s.pt",
               24, "AGPL-3.0", "FastSAM small (YOLOv8-seg): everything mode in one pass."),
    KnownModel("FastSAM-x.pt", "fastsam", "fastsam",
               "https://github.com/ultralytics/assets/releases/download/v8.3.0/FastSAM-x.pt",
               145, "AGPL-3.0", "FastSAM large (YOLOv8x-seg)."),
    KnownModel("sam_vit_b_01ec64.pth", "sam", "vit_b",
               "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
               375, "Apache-2.0", "Segment Anything ViT-B."),
    KnownModel("sam_vit_l_0b3195.pth", "sam", "vit_l",
               "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
               1250, "Apache-2.0", "Segment Anything ViT-L."),
    KnownModel("sam_vit_h_4b8939.pth", "sam", "vit_h",
               "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
               2560, "Apache-2.0", "Segment Anything ViT-H (the original, largest)."),
)

_folder_provider: Optional[Callable[[], list]] = None


def set_folder_provider(provider: Optional[Callable[[], list]]) -> None:
    """Let a host (ComfyUI) say where model folders are."""
    global _folder_provider
    _folder_provider = provider


def _user_default() -> Path:
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "comfyui-sam-kit" / "sams"


def model_dirs() -> list[Path]:
    if _folder_provider is not None:
        dirs = [Path(p) for p in _folder_provider() if p]
        if dirs:
            return dirs
    env = os.environ.get("SAMKIT_MODELS_DIR", "")
    dirs = [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    return dirs or [_user_default()]


def download_dir() -> Path:
    return model_dirs()[0]


def known_model(name: str) -> Optional[KnownModel]:
    for model in KNOWN_MODELS:
        if model.file_name == name:
            return model
    return None


def _is_model_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in MODEL_EXTENSIONS


def installed_models() -> list[str]:
    """Model files in the folders (sub-folders included), as names relative to their folder."""
    names: list[str] = []
    for folder in model_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if _is_model_file(path):
                rel = path.relative_to(folder).as_posix()
                if rel not in names:
                    names.append(rel)
    return names


def list_model_choices() -> list[str]:
    """Installed files first (what works offline), then known models that can be downloaded."""
    present = installed_models()
    return present + [m.file_name for m in KNOWN_MODELS if m.file_name not in present]


def find_model_file(name: str) -> Optional[Path]:
    candidate = Path(name).expanduser()
    if candidate.is_absolute():
        return candidate if candidate.is_file() else None
    for folder in model_dirs():
        path = folder / name
        if path.is_file():
            return path
    return None


def resolve_model_path(name: str, download: bool = True) -> Path:
    """An installed file wins; a known missing model is downloaded; anything else is an error."""
    path = find_model_file(name)
    if path is not None:
        return path
    known = known_model(Path(name).name)
    if known is not None and download:
        from .download import download_model

        return download_model(known, download_dir())
    folders = ", ".join(str(d) for d in model_dirs())
    known_names = ", ".join(m.file_name for m in KNOWN_MODELS)
    raise FileNotFoundError(
        f"model {name!r} was not found in {folders}. Put the file there, or choose one of the "
        f"models the pack can download: {known_names}."
    )
