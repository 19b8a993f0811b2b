"""A ``Sam``'s configuration read from its state dict's keys and shapes, and the ``Sam`` built
from it (the loader's SAM detection; the downloader checks a new file's architecture with it).

* segment-anything ``Sam`` checkpoints (vit_b / vit_l / vit_h and smaller custom ViTs);
* MobileSAM / TinySAM (TinyViT encoder, "vit_t").

State dicts of other networks (HQ-SAM, Hugging Face's SamModel, bare YOLO weights) raise
:class:`~.model_errors.UnsupportedCheckpoint` naming what they are; SAM 2 state dicts are
``sam2_config``'s (the loader asks ``sam2_config.is_sam2`` first).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import torch

from .model_errors import UnsupportedCheckpoint
from .tiny_vit import TinyViT, TinyViTConfig


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


def _describe(state: dict) -> str:
    prefixes = sorted({".".join(k.split(".")[:2]) for k in state})[:8]
    return ", ".join(prefixes) + (" …" if len(state) > 8 else "")


def _count(state: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def detect_sam_config(state: dict, name: str = "this state dict") -> SamConfig:
    """Derive a ``Sam``'s configuration from its state dict's keys and shapes.

    Raises :class:`UnsupportedCheckpoint` ("``name`` is a SAM 2 checkpoint", ...) for state
    dicts of other networks, with the family where the keys show it, and for partial SAM
    checkpoints (marker keys present, others missing or misshapen).
    """
    if any(k.startswith(("image_encoder.trunk.", "sam_mask_decoder.", "memory_attention.")) for k in state):
        raise UnsupportedCheckpoint(f"{name} is a SAM 2 checkpoint: read it with sam2_config.detect_sam2_config")
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

    try:
        return _derive_config(state, name)
    except UnsupportedCheckpoint:
        raise
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        # the marker keys are there but others are missing or misshapen: a partial or edited file
        looks = (f"has some Segment Anything keys but is not a complete SAM checkpoint "
                 f"({type(exc).__name__}: {str(exc)[:200]})")
        raise UnsupportedCheckpoint(f"{name} {looks}", looks) from None


def _derive_config(state: dict, name: str) -> SamConfig:
    """The configuration from a state dict that has SAM's marker keys (shapes and key counts)."""
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
