"""A SAM 2 / SAM 2.1 checkpoint's configuration, read from its state dict's keys and shapes.

Meta publishes SAM 2 as ``{"model": state_dict}`` ``.pt`` files of ``SAM2Base`` (Hiera image
encoder, FPN neck, SAM-style prompt encoder and mask decoder, plus the video memory modules);
the same tensors saved as safetensors load too. Nothing is read from the file's name:

* the Hiera size: ``embed_dim`` from ``image_encoder.trunk.patch_embed.proj.weight``; the stage
  depths from the blocks (a block with a ``proj`` starts a new stage, where the width doubles);
  the background position embedding's size from ``trunk.pos_embed``; the neck's channel list
  from ``neck.convs.*.conv.weight``;
* heads, global-attention blocks and window sizes leave no trace in the tensors (attention has
  the same weights whatever its heads or window), so (``embed_dim``, stage depths) must be one of
  the four published sizes, whose values come from Meta's configs
  (``sam2/configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml``, the same in ``configs/sam2``);
* SAM 2.1 against 2.0: 2.1 checkpoints carry ``no_obj_embed_spatial`` and ``obj_ptr_tpos_proj``
  (the video memory's object-pointer changes); the image path is the same for both.

Raises :class:`~.model_errors.UnsupportedCheckpoint` for a SAM 2 state dict that is partial or
of another size, naming what was found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .model_errors import UnsupportedCheckpoint

#: keys only SAM 2 checkpoints have (the loader dispatches on them)
SAM2_MARKERS = ("image_encoder.trunk.", "sam_mask_decoder.", "sam_prompt_encoder.")

#: the image path's modules; the rest of a SAM 2 checkpoint is the video memory, which images never use
IMAGE_PREFIXES = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")
VIDEO_PREFIXES = ("memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
                  "obj_ptr_proj.", "obj_ptr_tpos_proj.", "mask_downsample.", "no_obj_embed_spatial")


@dataclass(frozen=True)
class HieraSize:
    short: str  # Meta's config suffix: t, s, b+, l
    name: str  # the download file's word: tiny, small, base_plus, large
    num_heads: int
    global_att_blocks: tuple
    window_spec: tuple


#: (embed_dim, stage depths) → what the tensors cannot say; Meta's sam2.1_hiera_*.yaml values
KNOWN_SIZES = {
    (96, (1, 2, 7, 2)): HieraSize("t", "tiny", 1, (5, 7, 9), (8, 4, 14, 7)),
    (96, (1, 2, 11, 2)): HieraSize("s", "small", 1, (7, 10, 13), (8, 4, 14, 7)),
    (112, (2, 3, 16, 3)): HieraSize("b+", "base_plus", 2, (12, 16, 20), (8, 4, 14, 7)),
    (144, (2, 6, 36, 4)): HieraSize("l", "large", 2, (23, 33, 43), (8, 4, 16, 8)),
}


@dataclass(frozen=True)
class Sam2Config:
    version: str  # "2.0" or "2.1"
    size: HieraSize
    embed_dim: int
    stages: tuple
    window_pos_embed_bkg_spatial_size: tuple
    backbone_channel_list: tuple  # the neck's inputs, coarsest first (Meta's order)
    d_model: int  # the neck's and the decoder's width (256)
    pred_obj_scores_mlp: bool

    @property
    def arch(self) -> str:
        """Meta's config name for this checkpoint: ``sam2.1_hiera_t``, ``sam2_hiera_b+`` and the like."""
        return f"sam{'2.1' if self.version == '2.1' else '2'}_hiera_{self.size.short}"


def is_sam2(state: dict) -> bool:
    """Whether a checkpoint's state dict (names → tensors) has SAM 2's keys (Meta's names)."""
    return any(k.startswith(SAM2_MARKERS) for k in state)


def _count(state: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({int(m.group(1)) for k in state if (m := rx.match(k))})


def detect_sam2_config(state: dict, name: str = "this state dict") -> Sam2Config:
    """The configuration of a SAM 2 state dict (see the module docstring); raises
    :class:`UnsupportedCheckpoint` naming ``name`` for partial ones and unknown sizes."""
    try:
        config = _derive(state)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
        looks = (f"has SAM 2 keys but is not a complete SAM 2 checkpoint ({type(exc).__name__}: {str(exc)[:200]})")
        raise UnsupportedCheckpoint(f"{name} {looks}", looks) from None
    if isinstance(config, str):
        raise UnsupportedCheckpoint(f"{name} {config}", config)
    return config


def _derive(state: dict) -> Sam2Config | str:
    trunk = "image_encoder.trunk."
    embed_dim = state[trunk + "patch_embed.proj.weight"].shape[0]
    blocks = _count(state, r"image_encoder\.trunk\.blocks\.(\d+)\.")
    starts = [0] + [i for i in range(1, blocks) if f"{trunk}blocks.{i}.proj.weight" in state]
    stages = tuple(b - a for a, b in zip(starts, starts[1:] + [blocks]))
    size = KNOWN_SIZES.get((embed_dim, stages))
    if size is None:
        return (f"is a SAM 2 checkpoint of a Hiera size SAM Kit does not know (embed_dim {embed_dim}, stage depths "
                f"{list(stages)}); it runs the published tiny, small, base+ and large")
    necks = _count(state, r"image_encoder\.neck\.convs\.(\d+)\.")
    channels = tuple(state[f"image_encoder.neck.convs.{i}.conv.weight"].shape[1] for i in range(necks))
    for key in ("no_mem_embed", "sam_mask_decoder.conv_s0.weight", "sam_mask_decoder.obj_score_token.weight",
                "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"):
        state[key]  # noqa: B018  (KeyError: a partial checkpoint, reported by the caller)
    version = "2.1" if ("no_obj_embed_spatial" in state or "obj_ptr_tpos_proj.weight" in state) else "2.0"
    return Sam2Config(
        version=version,
        size=size,
        embed_dim=embed_dim,
        stages=stages,
        window_pos_embed_bkg_spatial_size=tuple(state[trunk + "pos_embed"].shape[-2:]),
        backbone_channel_list=channels,
        d_model=state["image_encoder.neck.convs.0.conv.weight"].shape[0],
        pred_obj_scores_mlp="sam_mask_decoder.pred_obj_score_head.layers.0.weight" in state,
    )
