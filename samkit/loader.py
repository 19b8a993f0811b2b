"""Loading checkpoints: the architecture is read from the file's contents, never its name.

* segment-anything ``Sam`` checkpoints (vit_b / vit_l / vit_h and smaller custom ViTs): the
  encoder, prompt encoder and decoder configurations are derived from tensor shapes;
* MobileSAM / TinySAM (TinyViT encoder, "vit_t"): likewise;
* FastSAM: an ultralytics YOLO-seg checkpoint, loaded by ultralytics itself.

Loaded models are cached by (file, size, mtime, device, dtype): running a workflow again
loads nothing.
"""

from __future__ import annotations

import logging
import re
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch

from . import registry, runtime
from .models import FASTSAM_FAMILY, SAM_FAMILY, LoadedModel
from .precision import fastsam_dtype, prepare_sam, resolve_dtype
from .tiny_vit import TinyViT, TinyViTConfig

log = logging.getLogger("comfyui-sam-kit")

CACHE_SIZE = 3
_cache: "OrderedDict[tuple, LoadedModel]" = OrderedDict()
_cache_lock = threading.Lock()
#: how many checkpoints were read from disk (tests and benchmarks check reuse with it)
load_count = 0


class UnsupportedCheckpoint(ValueError):
    pass


class DamagedCheckpoint(ValueError):
    pass


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
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        return any(b"ultralytics" in archive.read(n) for n in pickles)


def _read_state_dict(path: Path) -> dict:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds here; all mean "not a readable checkpoint"
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if archive.testzip() is None:
                    raise UnsupportedCheckpoint(
                        f"{path.name} holds Python objects other than tensors ({type(exc).__name__}); "
                        "only plain state-dict checkpoints (SAM, MobileSAM, TinySAM) and ultralytics FastSAM files are supported."
                    ) from exc
        raise DamagedCheckpoint(
            f"{path} could not be read ({type(exc).__name__}); the file is damaged or incomplete. "
            "Delete it and download it again."
        ) from exc
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UnsupportedCheckpoint(f"{path.name} is not a state dict of tensors")
    return data


def _describe(state: dict) -> str:
    prefixes = sorted({".".join(k.split(".")[:2]) for k in state})[:8]
    return ", ".join(prefixes) + (" …" if len(state) > 8 else "")


# ---------------------------------------------------------------- SAM detection


def _count(state: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def detect_sam_config(state: dict) -> SamConfig:
    """Derive a ``Sam``'s configuration from its state dict's keys and shapes."""
    if any(k.startswith(("image_encoder.trunk.", "sam_mask_decoder.", "memory_attention.")) for k in state):
        raise UnsupportedCheckpoint("this is a SAM 2 checkpoint; SAM Kit loads SAM 1, MobileSAM, TinySAM and FastSAM")
    if any(k.startswith("mask_decoder.hf_") for k in state):
        raise UnsupportedCheckpoint("this is an HQ-SAM checkpoint; SAM Kit loads SAM 1, MobileSAM, TinySAM and FastSAM")
    needed = ("prompt_encoder.point_embeddings.0.weight", "mask_decoder.iou_token.weight")
    if not all(k in state for k in needed):
        raise UnsupportedCheckpoint(
            f"not a Segment Anything checkpoint (found keys like: {_describe(state)}); "
            "SAM Kit loads SAM vit_b/l/h, MobileSAM, TinySAM and FastSAM files"
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
            f"unknown image encoder (found keys like: {_describe(state)}); supported: SAM ViT and TinyViT (MobileSAM/TinySAM)"
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
    config = detect_sam_config(state)
    sam = build_sam(config)
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UnsupportedCheckpoint(
            f"{path.name} looks like a {config.arch} SAM checkpoint but its tensors do not fit that architecture: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    return sam, config.arch


def _load_fastsam(path: Path):
    from ultralytics import FastSAM

    # Ultralytics checkpoints are pickles of whole modules (no weights-only format exists for
    # them); we only get here for files whose pickle names ultralytics' own classes.
    try:
        runner = FastSAM(str(path))
    except Exception as exc:
        raise UnsupportedCheckpoint(f"{path.name} is an ultralytics file that FastSAM cannot load: {exc}") from exc
    if getattr(runner, "task", None) != "segment":
        raise UnsupportedCheckpoint(f"{path.name} is an ultralytics {runner.task} model; FastSAM needs a segmentation (-seg) model")
    return runner


# ---------------------------------------------------------------- public API


def cache_key(path: Path, device: torch.device, dtype: torch.dtype) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(device), str(dtype))


def load_model(name_or_path: str | Path, device: str = "auto", precision: str = "auto") -> LoadedModel:
    """Load (or reuse) a model by file name in the model folders, or by path.

    ``precision`` (auto / fp32 / fp16 / bf16) is resolved by ``precision.py``; ``ValueError`` for
    fp16 on the CPU names what to choose instead.
    """
    global load_count
    path = registry.resolve_model_path(str(name_or_path))
    torch_device = runtime.resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)
    is_fastsam = _is_ultralytics_checkpoint(path)
    requested = dtype
    if is_fastsam:  # ultralytics runs fp32 or fp16 (its `half` flag): the cache is keyed by what runs
        dtype = fastsam_dtype(dtype, torch_device)
    key = cache_key(path, torch_device, dtype)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            runtime.prepare_model(cached)
            return cached

    log.info("SAM Kit: loading %s (%s, %s)", path.name, torch_device, dtype)
    if dtype != requested:
        log.info("SAM Kit: FastSAM runs %s on %s: ultralytics has fp32 and fp16 only (%s was asked for)",
                 dtype, torch_device, requested)
    if is_fastsam:
        runner = _load_fastsam(path)
        module = runner.model  # the weights stay fp32 in memory; ultralytics halves them when it runs
        family, arch = FASTSAM_FAMILY, "fastsam"
    else:
        state = _read_state_dict(path)
        sam, arch = _load_sam(path, state)
        module = runner = prepare_sam(sam, dtype).eval()
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
