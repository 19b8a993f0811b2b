"""Loading checkpoints: the architecture is read from the file's contents, never its name.

* segment-anything ``Sam`` checkpoints (vit_b / vit_l / vit_h and smaller custom ViTs): the
  encoder, prompt encoder and decoder configurations are derived from tensor shapes
  (``sam_config``);
* MobileSAM / TinySAM (TinyViT encoder, "vit_t"): likewise;
* FastSAM: an ultralytics YOLO-seg checkpoint, loaded by ultralytics itself (under any name).

Formats are read from the bytes too (``model_files``): a safetensors file named ``.pth`` loads,
and every unreadable or foreign file raises one ``model_errors.ModelFileError`` naming it.
A name is found, or a known model downloaded, by ``model_source.resolve_model_path``.

Loaded models are cached by (file, size, mtime, device, dtype): running a workflow again
loads nothing.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from . import model_files, model_source, runtime
from .model_errors import DamagedCheckpoint, ModelFileError, UnsupportedCheckpoint  # noqa: F401  (the loader's errors)
from .models import FASTSAM_FAMILY, SAM_FAMILY, LoadedModel
from .sam_config import SamConfig, build_sam, detect_sam_config  # noqa: F401  (SamConfig: still loader.SamConfig)

log = logging.getLogger("comfyui-sam-kit")

CACHE_SIZE = 3
_cache: "OrderedDict[tuple, LoadedModel]" = OrderedDict()
_cache_lock = threading.Lock()
#: how many checkpoints were read from disk (tests and benchmarks check reuse with it)
load_count = 0


# ---------------------------------------------------------------- reading files


def _is_ultralytics_checkpoint(path: Path) -> bool:
    """Ultralytics pickles whole modules; their pickle names ultralytics' classes."""
    return model_files.is_ultralytics(path)


def _read_state_dict(path: Path) -> dict:
    return model_files.read_state_dict(path)


def _load_sam(path: Path, state: dict):
    try:
        config = detect_sam_config(state, str(path))
        sam = build_sam(config)
    except UnsupportedCheckpoint as exc:
        raise UnsupportedCheckpoint(f"{exc}. {model_files.advice(path, False)}") from None
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError) as exc:  # a partial SAM
        raise model_files.unsupported(path, f"has some Segment Anything keys but is not a complete SAM checkpoint "
                                            f"({type(exc).__name__}: {str(exc)[:200]})") from None
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise model_files.unsupported(path, f"looks like a {config.arch} SAM checkpoint but its tensors do not fit "
                                            f"that architecture ({str(exc).splitlines()[0][:300]})") from None
    return sam, config.arch


def _load_fastsam(path: Path):
    return model_files.load_fastsam(path)


# ---------------------------------------------------------------- public API


def cache_key(path: Path, device: torch.device, dtype: torch.dtype) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(device), str(dtype))


def load_model(name_or_path: str | Path, device: str = "auto", precision: str = "auto",
               folders_only: bool = False) -> LoadedModel:
    """Load (or reuse) a model by name or path (``model_folders.find_model_file``'s rules; the
    ComfyUI node passes ``folders_only=True``: names inside the model folders only), downloading
    a known model that is missing (``model_source.resolve_model_path``).

    Raises ``FileNotFoundError`` (saying where it looked), ``download.DownloadError``, or a
    ``model_errors.ModelFileError`` (``DamagedCheckpoint`` / ``UnsupportedCheckpoint``) naming
    the file and what to do.
    """
    global load_count
    path = model_source.resolve_model_path(str(name_or_path), folders_only=folders_only)
    torch_device = runtime.resolve_device(device)
    dtype = runtime.resolve_dtype(precision, torch_device)
    key = cache_key(path, torch_device, dtype)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            runtime.prepare_model(cached)
            return cached

    log.info("SAM Kit: loading %s (%s, %s)", path.name, torch_device, dtype)
    if _is_ultralytics_checkpoint(path):
        runner = _load_fastsam(path)
        module = runner.model
        family, arch = FASTSAM_FAMILY, "fastsam"
        # ultralytics runs fp32 or fp16 (its `half` flag); the weights stay fp32 in memory
        dtype = torch.float32 if dtype == torch.float32 or torch_device.type == "cpu" else torch.float16
    else:
        state = _read_state_dict(path)
        sam, arch = _load_sam(path, state)
        module = runner = sam.to(dtype).eval()
        family = SAM_FAMILY
    load_count += 1
    loaded = LoadedModel(path.name, str(path), family, arch, module, runner, torch_device, dtype, key)
    runtime.prepare_model(loaded)
    with _cache_lock:
        _cache[key] = loaded
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return loaded


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def cached_models() -> list[LoadedModel]:
    with _cache_lock:
        return list(_cache.values())
