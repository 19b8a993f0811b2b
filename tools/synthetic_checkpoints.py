"""Checkpoints of the real architectures with synthetic (random) weights, saved as the published files are.

No real SAM / FastSAM weights are needed anywhere in development: the tests and the benchmarks
build the published architectures from segment-anything's, ultralytics' and the pack's own
classes, and save them in the published formats, so the pack loads them with its normal loader.
What each caller then does to the weights is its own business (the tests give batch norms
non-trivial statistics; bench/checkpoints.py calibrates decoders to a scene).

* ``build_random_sam(arch, seed=0) -> Sam``: ``arch`` in ``SAM_ARCHS``: vit_b / vit_l / vit_h
  (segment-anything's registry) or vit_t (MobileSAM: the pack's TinyViT-5M with segment-anything's
  heads, 1024 px input).
* ``build_random_fastsam(scale="s", seed=0)``: ultralytics' ``yolov8{scale}-seg.yaml`` with one
  class: FastSAM's architecture (FastSAM-s is YOLOv8s-seg, FastSAM-x YOLOv8x-seg).
* ``save_sam_checkpoint(sam, path) -> Path``: a plain ``state_dict`` (as Meta and MobileSAM publish).
* ``save_fastsam_model(model, path, imgsz) -> Path``: the dict ultralytics' trainer writes, fp16
  model (what FastSAM-s.pt is).
Both savers write to a temporary name and rename, so an interrupted run leaves no half file.

Shared by tests/testsupport/checkpoints.py and bench/checkpoints.py (it lives in tools/, which
both put on sys.path); it imports the pack but nothing of the tests or the benchmarks.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

SAM_ARCHS = ("vit_t", "vit_b", "vit_l", "vit_h")


def _samkit(module: str):
    """``samkit.<module>`` from the copy of the pack this process already uses.

    The tests import the repo as the package ``comfyui_sam_kit`` (as ComfyUI does, under a
    path-derived name); the benchmarks run from the repo root, where ``samkit`` is top-level.
    Taking the other copy would build models from a second set of module objects.
    """
    prefix = "comfyui_sam_kit." if "comfyui_sam_kit" in sys.modules else ""
    return importlib.import_module(f"{prefix}samkit.{module}")


def build_random_sam(arch: str, seed: int = 0):
    """A segment-anything ``Sam`` of the named published architecture with random weights, in eval mode.

    Raises ``ValueError`` for an ``arch`` not in ``SAM_ARCHS``.
    """
    torch.manual_seed(seed)
    if arch == "vit_t":
        loader, tiny_vit = _samkit("loader"), _samkit("tiny_vit")
        config = loader.SamConfig(
            encoder="tiny_vit", encoder_kwargs=tuple(sorted(vars(tiny_vit.TinyViTConfig()).items())),
            prompt_embed_dim=256, image_size=1024, mask_in_chans=16, decoder_depth=2, decoder_mlp_dim=2048,
            num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256,
        )
        return loader.build_sam(config).eval()
    if arch in ("vit_b", "vit_l", "vit_h"):
        from segment_anything import sam_model_registry

        return sam_model_registry[arch](checkpoint=None).eval()
    raise ValueError(f"unknown SAM architecture {arch!r}; choose one of {', '.join(SAM_ARCHS)}")


def build_random_fastsam(scale: str = "s", seed: int = 0):
    """ultralytics' YOLOv8-seg with one class named "object" (FastSAM's architecture), in eval mode."""
    from ultralytics.nn.tasks import SegmentationModel

    torch.manual_seed(seed)
    model = SegmentationModel(f"yolov8{scale}-seg.yaml", nc=1, verbose=False)
    model.names = {0: "object"}
    return model.eval()


def _save(obj, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
    return path


def save_sam_checkpoint(sam, path: Path) -> Path:
    """``torch.save(sam.state_dict())`` at ``path`` (folders made as needed); returns ``path``."""
    return _save(sam.state_dict(), path)


def save_fastsam_model(model, path: Path, imgsz: int) -> Path:
    """``model`` (converted to fp16 in place) in the dict format of ultralytics' trainer; returns ``path``.

    ``imgsz`` is recorded as the training size in ``train_args``, as the trainer does.
    """
    import ultralytics
    from ultralytics.utils import DEFAULT_CFG_DICT

    ckpt = {
        "epoch": -1,
        "best_fitness": None,
        "model": model.half(),
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": {**DEFAULT_CFG_DICT, "task": "segment", "imgsz": int(imgsz), "single_cls": True},
        "version": ultralytics.__version__,
    }
    return _save(ckpt, path)
