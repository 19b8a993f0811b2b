"""The SAM Segmentation Map job: segment everything in each image of a batch and paint it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import precision, runtime
from .automask import AutoMaskSettings, generate_segments
from .images import as_image_batch, to_uint8_rgb
from .models import LoadedModel
from .painting import area_order, paint_segments


@dataclass
class SegMapResult:
    #: colour map ``[B,H,W,3]``
    seg_map: torch.Tensor
    #: every segment of every image, largest first per image ``[N,H,W]``; an image with no
    #: segment contributes one empty mask, so the batch is never empty and images stay countable
    segments: torch.Tensor
    #: union of each image's segments ``[B,H,W]``
    coverage: torch.Tensor
    #: number of real segments per image
    counts: list[int]


def _segments_of(model: LoadedModel, image_u8, settings: AutoMaskSettings) -> torch.Tensor:
    """Bool ``[N,H,W]`` masks for one image, on the model's device."""
    if model.is_sam:
        return generate_segments(model.runner, image_u8, settings).masks
    if model.is_fastsam:
        from .fastsam import segment_everything  # FastSAM's own everything mode

        return segment_everything(model, image_u8)
    raise ValueError(f"model family {model.family!r} cannot segment everything")


def segmentation_map(
    model: LoadedModel, image: torch.Tensor, settings: AutoMaskSettings | None = None, seed: int = 0
) -> SegMapResult:
    settings = (settings or AutoMaskSettings()).validate()
    batch = as_image_batch(image)
    b, h, w, _ = batch.shape
    out = runtime.output_device()
    runtime.prepare_model(model)

    maps, all_segments, coverage, counts = [], [], [], []
    for i in range(b):
        runtime.check_interrupt()
        with precision.for_model(model):  # model work only: painting below stays exact fp32
            masks = _segments_of(model, to_uint8_rgb(batch[i]), settings)
        masks = masks[area_order(masks)]
        counts.append(int(masks.shape[0]))
        maps.append(paint_segments(masks, seed).to(out))
        if masks.shape[0]:
            all_segments.append(masks.to(out, torch.float32))
            coverage.append(masks.any(0).to(out, torch.float32))
        else:
            all_segments.append(torch.zeros((1, h, w), dtype=torch.float32, device=out))
            coverage.append(torch.zeros((h, w), dtype=torch.float32, device=out))
    return SegMapResult(
        seg_map=torch.stack(maps),
        segments=torch.cat(all_segments),
        coverage=torch.stack(coverage),
        counts=counts,
    )
