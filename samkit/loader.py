"""Loading checkpoints: the architecture is read from the file's contents, never its name.

* segment-anything ``Sam`` checkpoints (vit_b / vit_l / vit_h and smaller custom ViTs): the
  encoder, prompt encoder and decoder configurations are derived from tensor shapes
  (``sam_config``);
* MobileSAM / TinySAM (TinyViT encoder, "vit_t"): likewise;
* SAM 2 / SAM 2.1 (Hiera tiny / small / base+ / large): read from keys and shapes by
  ``sam2_config``, built by ``sam2_model`` (image path only);
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
from .loaded_model import FASTSAM_FAMILY, SAM2_FAMILY, SAM_FAMILY, LoadedModel
from .sam_config import SamConfig, build_sam, detect_sam_config  # noqa: F401  (SamConfig: still loader.SamConfig)
from .sam2_config import detect_sam2_config, is_sam2
from .sam2_model import load_sam2
from .precision import fastsam_dtype, prepare_sam, prepare_sam2, resolve_dtype

log = logging.getLogger("comfyui-sam-kit")

CACHE_SIZE = 3
_cache: "OrderedDict[tuple, LoadedModel]" = OrderedDict()
_cache_lock = threading.Lock()
#: how many checkpoints were read from disk (tests and benchmarks check reuse with it)
load_count = 0


# ---------------------------------------------------------------- reading files


def _load_sam(path: Path, state: dict):
    try:
        config = detect_sam_config(state, str(path))
    except UnsupportedCheckpoint as exc:  # another network, or a partial SAM: say what to do about the file
        raise UnsupportedCheckpoint(f"{exc}. {model_files.advice(path, False)}", exc.looks) from None
    try:
        sam = build_sam(config)
        sam.load_state_dict(state, strict=True)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        raise model_files.unsupported(path, f"looks like a {config.arch} SAM checkpoint but its tensors do not fit "
                                            f"that architecture ({str(exc).splitlines()[0][:300]})") from None
    return sam, config.arch


def _load_sam2(path: Path, state: dict):
    try:
        config = detect_sam2_config(state, str(path))
        return load_sam2(state, config, str(path)), config.arch
    except UnsupportedCheckpoint as exc:
        raise UnsupportedCheckpoint(f"{exc}. {model_files.advice(path, False)}", exc.looks) from None


# ---------------------------------------------------------------- public API


def cache_key(path: Path, device: torch.device, dtype: torch.dtype) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(device), str(dtype))


def load_model(name_or_path: str | Path, device: str = "auto", precision: str = "auto",
               folders_only: bool = False) -> LoadedModel:
    """Load (or reuse) a model by name or path (``model_folders.find_model_file``'s rules; the
    ComfyUI node passes ``folders_only=True``: names inside the model folders only), downloading
    a known model that is missing (``model_source.resolve_model_path``).

    The ``CACHE_SIZE`` most recently used models stay loaded: loading the same file (same size
    and mtime) for the same device and dtype again returns the same object. A model the cache
    drops is freed once nothing else holds it, and with it what the host keeps for it (inside
    ComfyUI, its ModelPatcher) and its image embeddings. Every model returned has been through
    ``runtime.prepare_model`` (on its device; inside ComfyUI, registered with its memory manager).

    Raises ``FileNotFoundError`` (saying where it looked), ``download.DownloadError``, or a
    ``model_errors.ModelFileError`` (``DamagedCheckpoint`` / ``UnsupportedCheckpoint``) naming
    the file and what to do. ``precision`` (auto / fp32 / fp16 / bf16) is resolved by
    ``precision.py``; ``ValueError`` for fp16 on the CPU names what to choose instead.
    """
    global load_count
    path = model_source.resolve_model_path(str(name_or_path), folders_only=folders_only)
    torch_device = runtime.resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)
    is_fastsam = model_files.is_ultralytics(path)
    requested = dtype
    if is_fastsam:  # ultralytics runs fp32 or fp16 (its `half` flag): the cache is keyed by what runs
        dtype = fastsam_dtype(dtype, torch_device)
    key = cache_key(path, torch_device, dtype)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
    if cached is not None:
        # outside the lock: a host making room for this model may unload, and so release, others
        runtime.prepare_model(cached)
        return cached

    log.info("SAM Kit: loading %s (%s, %s)", path.name, torch_device, dtype)
    if dtype != requested:
        log.info("SAM Kit: FastSAM runs %s on %s: ultralytics has fp32 and fp16 only (%s was asked for)",
                 dtype, torch_device, requested)
    if is_fastsam:
        runner = model_files.load_fastsam(path)
        module = runner.model  # the weights stay fp32 in memory; ultralytics halves them when it runs
        family, arch = FASTSAM_FAMILY, "fastsam"
    else:
        state = model_files.read_state_dict(path)
        if is_sam2(state):
            sam2, arch = _load_sam2(path, state)
            del state  # the video memory's tensors go now
            module = runner = prepare_sam2(sam2, dtype).eval()
            family = SAM2_FAMILY
        else:
            sam, arch = _load_sam(path, state)
            module = runner = prepare_sam(sam, dtype).eval()
            family = SAM_FAMILY
    load_count += 1
    loaded = LoadedModel(path.name, str(path), family, arch, module, runner, torch_device, dtype, key)
    if loaded.is_fastsam:
        _keep_one_fastsam_copy(loaded)
    runtime.prepare_model(loaded)
    with _cache_lock:
        _cache[key] = loaded
        _cache.move_to_end(key)
        evicted = [_cache.popitem(last=False)[1] for _ in range(len(_cache) - CACHE_SIZE)]
    # let go outside the lock: a model nobody else holds dies here, with its host state
    del evicted
    return loaded


def _keep_one_fastsam_copy(loaded: LoadedModel) -> None:
    """Make ``loaded.module`` the weights FastSAM runs, and the only copy kept.

    Ultralytics' predictor (set up on the first prediction) runs a fused deep copy of
    ``runner.model`` on the device, and ``runner.ckpt`` keeps the checkpoint's modules (the
    original, an EMA, optimizer state) for training. Left alone, the weights would sit in memory
    up to three times, and the host (ComfyUI) would manage a copy that never runs. So the
    predictor is set up now, with one tiny prediction using the arguments every run uses (the
    device and half precision, which ultralytics would otherwise rebuild the predictor for), and
    the runner keeps the running copy alone.
    """
    import numpy as np

    from .fastsam import predict_everything

    runner = loaded.runner
    predict_everything(loaded, np.zeros((32, 32, 3), dtype=np.uint8), size=32)
    running = getattr(getattr(runner.predictor, "model", None), "model", None)  # AutoBackend's (fused) module
    if not isinstance(running, torch.nn.Module):
        return  # a layout of another ultralytics version: leave it as it is
    runner.model = loaded.module = running
    runner.ckpt = {}  # what ultralytics' Model starts with; only saving and training read it


def release(model: LoadedModel) -> bool:
    """Stop keeping ``model`` in the cache; returns whether the cache held it.

    Hosts call this when they unload a model (ComfyUI: "unload models", or room made for another
    model), so the pack never pins memory the host released. Whoever still holds the object
    (ComfyUI's execution cache) can run it again; a later ``load_model`` of its file loads anew.
    """
    with _cache_lock:
        key = next((k for k, held in _cache.items() if held is model), None)
        if key is None:
            return False
        del _cache[key]  # the caller holds ``model``: it cannot die inside the lock
    return True


def clear_cache() -> None:
    with _cache_lock:
        dropped = list(_cache.values())
        _cache.clear()
    del dropped  # outside the lock, as in load_model


def cached_models() -> list[LoadedModel]:
    """The models the cache holds now, least recently used first (tests and the memory probe read it)."""
    with _cache_lock:
        return list(_cache.values())
