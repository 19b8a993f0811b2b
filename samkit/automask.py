"""Segment-everything for SAM-family models: the same result as segment-anything's
``SamAutomaticMaskGenerator``, without its waste.

The algorithm (point grid → mask decoder → predicted-IoU filter → stability filter → box
NMS, optionally over crop layers, then small-region clean-up) and its thresholds are the
reference's, so a checkpoint gives the same segments. What changes is where the work goes:

* the decoder's image-side work is shared by all prompts of a batch, and the predicted-IoU
  filter runs before any mask exists: only the survivors' features are upsampled
  (``point_decoder``; the reference makes every mask of every prompt, upsamples each to full
  size, then throws most away);
* surviving masks are upsampled in small chunks on the model's device, scored and boxed
  there, and only their low-resolution logits are kept — no run-length encoding on the CPU,
  and memory stays bounded on large images (``automask_crop.py``, one crop);
* only masks that survive NMS are upsampled again at the end, a chunk at a time, straight into
  compact storage (``compact.py``: bit-packed boxes), so no full-size tensor of all masks exists;
  the small-region clean-up also works one mask at a time.

The model is reached only through ``everything_backend.EverythingBackend`` (encode a crop, decode
points or boxes, upsample logits): ``sam_backend.SamBackend`` for segment-anything's ``Sam``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torchvision.ops.boxes import batched_nms, box_area

from . import runtime
from .automask_crop import CropRun, nms_boxes
from .automask_sampling import as_proposals, check as check_sampling_args, planned_batches, sample_crop
from .automask_settings import AutoMaskSettings  # noqa: F401  (the settings' home; imported from here too)
from .compact import CompactMasks
from .everything_backend import EverythingBackend
from .sam_backend import SamBackend
from .sampling_params import GRID

# Pure helpers from the reference implementation: reusing them keeps the grid, crop boxes and
# box maths identical to segment-anything's.
from segment_anything.modeling import Sam
from segment_anything.utils.amg import build_all_layer_point_grids, generate_crop_boxes, remove_small_regions


@dataclass
class Segments:
    """Segments of one image, in the order the reference returns them.

    ``compact`` holds the masks (:class:`~.compact.CompactMasks`, bit-packed boxes on the CPU);
    ``masks`` expands them to bool ``[N,H,W]`` (N×H×W bytes: for tests and small images).
    ``boxes`` xyxy ``[N,4]`` (int); ``points`` the prompt that made each mask, in image pixels
    (for a box prompt, the box's centre);
    ``crop_boxes`` xyxy of the crop each mask came from.
    """

    compact: CompactMasks
    boxes: torch.Tensor
    predicted_iou: torch.Tensor
    stability_score: torch.Tensor
    points: torch.Tensor
    crop_boxes: torch.Tensor

    def __len__(self) -> int:
        return len(self.compact)

    @property
    def masks(self) -> torch.Tensor:
        return self.compact.dense()

    @property
    def areas(self) -> torch.Tensor:
        return self.compact.areas

    @classmethod
    def empty(cls, height: int, width: int, device=None) -> "Segments":
        return cls(
            compact=CompactMasks(height, width),
            boxes=torch.zeros((0, 4), dtype=torch.int64, device=device),
            predicted_iou=torch.zeros((0,), device=device),
            stability_score=torch.zeros((0,), device=device),
            points=torch.zeros((0, 2), device=device),
            crop_boxes=torch.zeros((0, 4), dtype=torch.int64, device=device),
        )


@dataclass
class FilterCounts:
    """How many masks each stage let through (summed over crops): what post-processing cost."""

    candidates: int = 0
    passed_pred_iou: int = 0
    passed_stability: int = 0
    kept: int = 0

    def describe(self) -> str:
        return (f"{self.candidates} candidate masks → {self.passed_pred_iou} pass pred-IoU → "
                f"{self.passed_stability} pass stability → {self.kept} kept")


def backend_for(model) -> EverythingBackend:
    """The everything-mode backend of ``model``: an :class:`~.everything_backend.EverythingBackend`
    as it is, or a segment-anything ``Sam`` (SAM, MobileSAM, TinySAM) wrapped in ``SamBackend``."""
    if isinstance(model, EverythingBackend):
        return model
    if isinstance(model, Sam):
        return SamBackend(model)
    raise ValueError(f"everything mode cannot run a {type(model).__name__}: give a SAM-family model")


def _full_masks(backend: EverythingBackend, crop: dict, index: torch.Tensor) -> CompactMasks:
    """Compact full-image masks of one crop's survivors ``index``, upsampled and packed a chunk at a time."""
    x0, y0, _, _ = crop["crop_box"]
    height, width = crop["orig_size"]
    enc = crop["enc"]
    out = CompactMasks(height, width)
    step = backend.upsample_chunk(enc)
    for c in range(0, len(index), step):
        logits = backend.upsample(enc, crop["low_res"][index[c : c + step]])
        out.add(logits > backend.mask_threshold, offset=(x0, y0))
    return out


def _postprocess_small_regions(segments: Segments, min_area: int, nms_thresh: float) -> Segments:
    """Remove small islands and fill small holes, then re-run NMS (the reference's clean-up), a mask at a time."""
    if len(segments) == 0:
        return segments
    device = segments.boxes.device
    store = segments.compact
    cleaned = CompactMasks(store.height, store.width)
    scores = []
    for i in range(len(store)):
        runtime.check_interrupt()
        mask, changed_holes = remove_small_regions(store.mask(i), min_area, mode="holes")
        mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
        changed = changed_holes or changed_islands
        if changed:
            cleaned.add_numpy(mask)
        else:  # unchanged: the same packed bits
            cleaned.entries.append(store.entries[i])
        scores.append(float(not changed))
    boxes = cleaned.boxes.to(device)  # batched_mask_to_box of the cleaned masks
    score_t = torch.as_tensor(scores, device=device)
    keep = batched_nms(nms_boxes(boxes, (store.height, store.width)), score_t, torch.zeros_like(score_t), iou_threshold=nms_thresh)
    # Like the reference: masks that were cleaned take their new pixels and box.
    changed = score_t == 0.0
    final_boxes = torch.where(changed[:, None], boxes, segments.boxes)
    return Segments(
        compact=cleaned[keep],
        boxes=final_boxes[keep],
        predicted_iou=segments.predicted_iou[keep],
        stability_score=segments.stability_score[keep],
        points=segments.points[keep],
        crop_boxes=segments.crop_boxes[keep],
    )


def generate_segments(model, image: np.ndarray, settings: Optional[AutoMaskSettings] = None,
                      counts: Optional[FilterCounts] = None, sampling: str = GRID, proposals=None) -> Segments:
    """Segment everything in one RGB uint8 ``[H,W,3]`` image.

    ``model``: a segment-anything ``Sam`` or any :class:`~.everything_backend.EverythingBackend`.
    ``sampling`` (``sampling_params.SAMPLING``): which prompts are decoded; ``grid`` (the default
    here) gives ``SamAutomaticMaskGenerator``'s segments. ``proposals``: for ``object-aware``, a
    FastSAM ``LoadedModel`` or a function crop RGB -> float64 xyxy boxes (``automask_sampling``).
    ``counts``, when given, is filled with how many masks passed each filter. Raises ValueError
    for bad settings, images or a missing proposal model; ``runtime.Interrupted`` when the host
    cancels (checked before every batch of prompts).
    """
    counts = counts if counts is not None else FilterCounts()
    settings = (settings or AutoMaskSettings()).validate()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError("generate_segments expects an RGB uint8 array of shape [H, W, 3]")
    proposals = as_proposals(proposals)
    check_sampling_args(sampling, proposals)
    backend = backend_for(model)
    orig_size = image.shape[:2]
    scale = settings.crop_n_points_downscale_factor
    grids = build_all_layer_point_grids(settings.points_per_side, settings.crop_n_layers, scale)
    crop_boxes, layer_idxs = generate_crop_boxes(orig_size, settings.crop_n_layers, settings.crop_overlap_ratio)
    sides = [int(settings.points_per_side / scale**layer) for layer in layer_idxs]  # as the grids are built
    plans = [planned_batches(sampling, len(grids[layer]), side, settings.points_per_batch)
             for layer, side in zip(layer_idxs, sides)]
    bar = runtime.progress(sum(plans), "segmenting")
    crops, device, done = [], None, 0
    for crop_box, layer_idx, side, plan in zip(crop_boxes, layer_idxs, sides, plans):
        done += plan
        if crop_box[2] <= crop_box[0] or crop_box[3] <= crop_box[1]:
            # generate_crop_boxes places crops past the edge of images a few pixels wide (a 1x1
            # image's second crop column starts at x=1); they hold no pixel and add nothing
            bar.set(done)
            continue
        runtime.check_interrupt()
        # a batch advances the bar, never past this crop's share (hierarchical may skip batches)
        run = CropRun(backend, image, crop_box, orig_size, settings, counts, lambda end=done: bar.set(min(bar.value + 1, end)))
        device = run.device
        sample_crop(run, sampling, grids[layer_idx], side, proposals)
        crop = run.finish()
        bar.set(done)
        if crop is not None and len(crop["iou"]):
            crops.append(crop)
    bar.close()
    if not crops:
        return Segments.empty(*orig_size, device=device)

    crop_id = torch.cat([torch.full((len(c["iou"]),), i, device=device) for i, c in enumerate(crops)])
    local_idx = torch.cat([torch.arange(len(c["iou"]), device=device) for c in crops])
    boxes = torch.cat([c["boxes"] for c in crops])
    iou = torch.cat([c["iou"] for c in crops])
    stability = torch.cat([c["stability"] for c in crops])
    points = torch.cat([c["points"] for c in crops])
    crop_xyxy = torch.cat([c["crop_boxes"] for c in crops])

    if len(crop_boxes) > 1:
        # Prefer masks from smaller crops, as the reference does.
        scores = 1 / box_area(crop_xyxy.float())
        order = batched_nms(nms_boxes(boxes, orig_size), scores, torch.zeros_like(scores), iou_threshold=settings.crop_nms_thresh)
    else:
        order = torch.arange(len(iou), device=device)

    # Final masks go straight into compact storage, crop by crop, each to its row of ``order``.
    entries = [None] * len(order)
    for i, crop in enumerate(crops):
        rows = (crop_id[order] == i).nonzero()[:, 0]
        if rows.numel():
            made = _full_masks(backend, crop, local_idx[order][rows])
            for row, entry in zip(rows.tolist(), made.entries):
                entries[row] = entry

    segments = Segments(
        compact=CompactMasks(*orig_size, entries),
        boxes=boxes[order],
        predicted_iou=iou[order],
        stability_score=stability[order],
        points=points[order],
        crop_boxes=crop_xyxy[order],
    )
    if settings.min_mask_region_area > 0:
        segments = _postprocess_small_regions(
            segments, settings.min_mask_region_area, max(settings.box_nms_thresh, settings.crop_nms_thresh)
        )
    counts.kept = len(segments)
    return segments
