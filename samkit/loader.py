"""Loading checkpoints: the architecture is read from the file's contents, never its name.

* segment-anything ``Sam`` checkpoints (vit_b / vit_l / vit_h and smaller custom ViTs): the
  encoder, prompt encoder and decoder configurations are derived from tensor shapes;
* MobileSAM / TinySAM (TinyViT encoder, "vit_t"): likewise;
* FastSAM: an ultralytics YOLO-seg checkpoint, loaded by ultralytics itself (under any name).

Formats are read from the bytes too (``model_files``): a safetensors file named ``.pth`` loads,
and every unreadable or foreign file raises one ``registry.ModelFileError`` naming it.

Loaded models are cached by (file, size, mtime, device, dtype): running a workflow again
loads nothing.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch

from . import model_files, registry, runtime
from .model_files import DamagedCheckpoint, UnsupportedCheckpoint  # noqa: F401  (the loader's errors)
from .models import FASTSAM_FAMILY, SAM_FAMILY, LoadedModel
from .registry import ModelFileError  # noqa: F401
from .tiny_vit import TinyViT, TinyViTConfig

log = logging.getLogger("comfyui-sam-kit")

CACHE_SIZE = 3
_cache: "OrderedDict[tuple, LoadedModel]" = OrderedDict()
_cache_lock = threading.Lock()
#: how many checkpoints were read from disk (tests and benchmarks check reuse with it)
load_count = 0


@dataclass(frozen=True)
class SamConfig:
    encoder: str  # "vit" or "tiny_vit"
    encoder_kwargs: tuple  # sorted (name, value) pairs
    prompt_embed_dim: int
    image_size: int
    mask_in_chans: int
    decoder_depth: int
    decoder_mlp_dim: int
    num_multimask_outputs: int
    iou_head_depth: int
    iou_head_hidden_dim: int

    @property
    def arch(self) -> str:
        if self.encoder == "tiny_vit":
            return "vit_t"
        kw = dict(self.encoder_kwargs)
        named = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
        standard = {"vit_b": 12, "vit_l": 24, "vit_h": 32}
        name = named.get(kw["embed_dim"])
        if name and kw["depth"] == standard[name] and kw["img_size"] == 1024:
            return name
        return "vit_custom"


# ---------------------------------------------------------------- reading files


def _is_ultralytics_checkpoint(path: Path) -> bool:
    """Ultralytics pickles whole modules; their pickle names ultralytics' classes."""
    return model_files.is_ultralytics(path)


def _read_state_dict(path: Path) -> dict:
    return model_files.read_state_dict(path)


def _describe(state: dict) -> str:
    prefixes = sorted({".".join(k.split(".")[:2]) for k in state})[:8]
    return ", ".join(prefixes) + (" …" if len(state) > 8 else "")


# ---------------------------------------------------------------- SAM detection


def _count(state: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def detect_sam_config(state: dict, name: str = "this state dict") -> SamConfig:
    """Derive a ``Sam``'s configuration from its state dict's keys and shapes.

    Raises :class:`UnsupportedCheckpoint` ("``name`` is a SAM 2 checkpoint", ...) for state
    dicts of other networks, with the family where the keys show it.
    """
    if any(k.startswith(("image_encoder.trunk.", "sam_mask_decoder.", "memory_attention.")) for k in state):
        raise UnsupportedCheckpoint(f"{name} is a SAM 2 checkpoint, which SAM Kit cannot run (it runs SAM 1)")
    if any(k.startswith("mask_decoder.hf_") for k in state):
        raise UnsupportedCheckpoint(f"{name} is an HQ-SAM checkpoint (its mask decoder has HQ layers), which SAM Kit "
                                    "cannot run (it runs SAM 1)")
    if any(k.startswith("vision_encoder.") for k in state) and any(k.startswith("prompt_encoder.") for k in state):
        raise UnsupportedCheckpoint(f"{name} is a Hugging Face transformers SamModel checkpoint; SAM Kit reads the "
                                    "original segment-anything format (the .pth files Meta publishes)")
    needed = ("prompt_encoder.point_embeddings.0.weight", "mask_decoder.iou_token.weight")
    if not all(k in state for k in needed):
        yolo = all(k.startswith("model.") for k in state)
        raise UnsupportedCheckpoint(
            f"{name} is not a Segment Anything checkpoint (found keys like: {_describe(state)})"
            + ("; it looks like the bare weights of an ultralytics YOLO model: FastSAM needs the .pt file ultralytics "
               "saves, with its architecture" if yolo else "")
        )

    if "image_encoder.patch_embed.proj.weight" in state:
        proj = state["image_encoder.patch_embed.proj.weight"]
        embed_dim, _, patch, _ = proj.shape
        grid = state["image_encoder.pos_embed"].shape[1]
        img_size = grid * patch
        depth = _count(state, r"image_encoder\.blocks\.(\d+)\.")
        rel = state.get("image_encoder.blocks.0.attn.rel_pos_h")
        use_rel_pos = rel is not None
        head_dim = rel.shape[1] if use_rel_pos else 64
        global_idx, window = [], 0
        for i in range(depth):
            r = state.get(f"image_encoder.blocks.{i}.attn.rel_pos_h")
            size = (r.shape[0] + 1) // 2 if r is not None else grid
            if size == grid:
                global_idx.append(i)
            else:
                window = size
        encoder_kwargs = dict(
            img_size=img_size,
            patch_size=patch,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=embed_dim // head_dim,
            mlp_ratio=state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
            out_chans=state["image_encoder.neck.0.weight"].shape[0],
            qkv_bias="image_encoder.blocks.0.attn.qkv.bias" in state,
            use_rel_pos=use_rel_pos,
            global_attn_indexes=tuple(global_idx),
            window_size=window,
        )
        encoder = "vit"
    elif "image_encoder.patch_embed.seq.0.c.weight" in state:
        stages = _count(state, r"image_encoder\.layers\.(\d+)\.")
        dims, depths, heads, windows = [], [], [], []
        for i in range(stages):
            depths.append(_count(state, rf"image_encoder\.layers\.{i}\.blocks\.(\d+)\."))
            if i == 0:
                dims.append(state["image_encoder.layers.0.blocks.0.conv1.c.weight"].shape[1])
                heads.append(1)
                windows.append(7)
            else:
                dims.append(state[f"image_encoder.layers.{i}.blocks.0.attn.qkv.weight"].shape[1])
                bias = state[f"image_encoder.layers.{i}.blocks.0.attn.attention_biases"]
                heads.append(bias.shape[0])
                windows.append(int(round(bias.shape[1] ** 0.5)))
        head = state.get("image_encoder.head.weight")
        mlp = state.get("image_encoder.layers.1.blocks.0.mlp.fc1.weight")
        expand = state["image_encoder.layers.0.blocks.0.conv1.c.weight"].shape[0] / dims[0]
        encoder_kwargs = dict(
            embed_dims=tuple(dims),
            depths=tuple(depths),
            num_heads=tuple(heads),
            window_sizes=tuple(windows),
            mlp_ratio=(mlp.shape[0] / dims[1]) if mlp is not None else 4.0,
            mbconv_expand_ratio=expand,
            num_classes=head.shape[0] if head is not None else 0,
            img_size=1024,
            out_chans=state["image_encoder.neck.0.weight"].shape[0],
        )
        img_size = 1024
        encoder = "tiny_vit"
    else:
        raise UnsupportedCheckpoint(
            f"{name} is a SAM checkpoint with an image encoder SAM Kit does not know (found keys like: "
            f"{_describe(state)}); it runs SAM's ViT and TinyViT (MobileSAM/TinySAM)"
        )

    return SamConfig(
        encoder=encoder,
        encoder_kwargs=tuple(sorted(encoder_kwargs.items())),
        prompt_embed_dim=state["prompt_encoder.point_embeddings.0.weight"].shape[1],
        image_size=img_size,
        mask_in_chans=state["prompt_encoder.mask_downscaling.3.weight"].shape[0],
        decoder_depth=_count(state, r"mask_decoder\.transformer\.layers\.(\d+)\."),
        decoder_mlp_dim=state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
        num_multimask_outputs=state["mask_decoder.mask_tokens.weight"].shape[0] - 1,
        iou_head_depth=_count(state, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
        iou_head_hidden_dim=state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
    )


def build_sam(config: SamConfig):
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    kw = dict(config.encoder_kwargs)
    if config.encoder == "vit":
        kw["global_attn_indexes"] = list(kw["global_attn_indexes"])
        encoder = ImageEncoderViT(norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **kw)
        patch = kw["patch_size"]
    else:
        encoder = TinyViT(TinyViTConfig(**kw))
        patch = 16  # TinyViT's neck works on a 64×64 grid at 1024 px, like SAM's ViT
    grid = config.image_size // patch
    dim = config.prompt_embed_dim
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=TwoWayTransformer(depth=config.decoder_depth, embedding_dim=dim, mlp_dim=config.decoder_mlp_dim, num_heads=8),
            transformer_dim=dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


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
    """Load (or reuse) a model by name or path (``registry.find_model_file``'s rules; the
    ComfyUI node passes ``folders_only=True``: names inside the model folders only).

    The ``CACHE_SIZE`` most recently used models stay loaded: loading the same file (same size
    and mtime) for the same device and dtype again returns the same object. A model the cache
    drops is freed once nothing else holds it, and with it what the host keeps for it (inside
    ComfyUI, its ModelPatcher) and its image embeddings. Every model returned has been through
    ``runtime.prepare_model`` (on its device; inside ComfyUI, registered with its memory manager).

    Raises ``FileNotFoundError`` (saying where it looked) or a ``registry.ModelFileError``
    (``DamagedCheckpoint`` / ``UnsupportedCheckpoint``) naming the file and what to do.
    """
    global load_count
    path = registry.resolve_model_path(str(name_or_path), folders_only=folders_only)
    torch_device = runtime.resolve_device(device)
    dtype = runtime.resolve_dtype(precision, torch_device)
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
    with _cache_lock:
        return list(_cache.values())
