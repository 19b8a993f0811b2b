"""Checkpoints of the real architectures, built in the tests and saved as the real files are.

* ``build_small_sam(seed)``: a segment-anything ``Sam`` with a small ViT encoder (256 px input).
* ``build_vit_t_sam(seed)``: MobileSAM's real configuration (TinyViT-5M encoder, 1024 px), with
  batch-norm statistics that are not the identity.
* ``save_sam_checkpoint(sam, path)``: ``torch.save(state_dict)``, as Meta and MobileSAM publish.
* ``save_fastsam_checkpoint(path, seed, scale="n")``: an ultralytics YOLOv8n-seg with one class,
  saved in the dict format ultralytics' trainer writes (what FastSAM-s.pt is), trained size 256.
The published architectures and formats come from tools/synthetic_checkpoints.py, which the
benchmarks share. Random weights: these prove loading and plumbing; tests about what a mask *is*
use the trained fixtures in tests/testmodels.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from synthetic_checkpoints import build_random_fastsam, build_random_sam, save_fastsam_model, save_sam_checkpoint

__all__ = ["SMALL_SAM", "build_small_sam", "build_vit_t_sam", "save_fastsam_checkpoint", "save_sam_checkpoint"]

SMALL_SAM = dict(img_size=256, patch_size=16, embed_dim=64, depth=2, num_heads=2, global_attn_indexes=[1], window_size=4)


def build_small_sam(seed: int = 0, **overrides) -> Sam:
    torch.manual_seed(seed)
    cfg = {**SMALL_SAM, **overrides}
    grid = cfg["img_size"] // cfg["patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg["depth"], embed_dim=cfg["embed_dim"], img_size=cfg["img_size"], mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=cfg["num_heads"], patch_size=cfg["patch_size"],
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=cfg["global_attn_indexes"],
            window_size=cfg["window_size"], out_chans=256,
        ),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                     input_image_size=(cfg["img_size"], cfg["img_size"]), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=512, num_heads=8),
                                 transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=64),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def build_vit_t_sam(seed: int = 0) -> Sam:
    """MobileSAM's exact architecture, through the pack's TinyViT and segment-anything's heads."""
    sam = build_random_sam("vit_t", seed)
    # give batch norms non-trivial statistics so a wrong key mapping would show in outputs
    with torch.no_grad():
        for m in sam.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return sam


def save_fastsam_checkpoint(path: Path, seed: int = 0, scale: str = "n") -> Path:
    return save_fastsam_model(build_random_fastsam(scale, seed), path, imgsz=256)
