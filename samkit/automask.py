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
  and memory stays bounded on large images;
* only masks that survive NMS are upsampled again at the end, a chunk at a time, straight into
  compact storage (``compact.py``: bit-packed boxes), so no full-size tensor of all masks exists;
  the small-region clean-up also works one mask at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torchvision.ops.boxes import batched_nms, box_area

from . import runtime
from .automask_settings import AutoMaskSettings  # noqa: F401  (the settings' home; imported from here too)
from .compact import CompactMasks
from .precision import fp32_island
from .point_decoder import (
    decode_chunk_size,
    decode_point_tokens,
    masks_for,
    share_image,
    upsample_chunk_size,
)
from .sam_transforms import encode_image, sam_resize

# Pure helpers from the reference implementation: reusing them keeps the grid, crop boxes and
# box maths identical to segment-anything's.
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    batched_mask_to_box,
    build_all_layer_point_grids,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
    uncrop_boxes_xyxy,
    uncrop_points,
)


@dataclass
class Segments:
    """Segments of one image, in the order the reference returns them.

    ``compact`` holds the masks (:class:`~.compact.CompactMasks`, bit-packed boxes on the CPU);
    ``masks`` expands them to bool ``[N,H,W]`` (N×H×W bytes: for tests and small images).
    ``boxes`` xyxy ``[N,4]`` (int); ``points`` the prompt that made each mask, in image pixels;
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


def _upsample(sam: Sam, low_res: torch.Tensor, input_size: tuple, original_size: tuple) -> torch.Tensor:
    """Low-res logits ``[n,h,w]`` → fp32 logits at ``original_size``, exactly as ``Sam.postprocess_masks``.

    fp32 whatever the model's dtype: stability scores and thresholds are read off them (precision.py).
    """
    with fp32_island(low_res.device):
        return sam.postprocess_masks(low_res[:, None].float(), input_size, original_size)[:, 0]


def _nms_boxes(boxes: torch.Tensor, image_size: tuple) -> torch.Tensor:
    """Boxes for NMS: the reference's xyxy boxes, except on images a pixel thin.

    ``batched_mask_to_box`` gives inclusive pixel corners, so a mask one pixel wide or high has a
    zero-area box, whose IoU with its duplicates is 0/0: the reference keeps every copy, and on an
    image one pixel high or wide (where every mask is such a line) that is one identical segment
    per grid point (48 on a 1x40 strip). There, zero-area boxes get one pixel. Other images keep
    the reference's boxes exactly, so their segments stay the reference's (fidelity tests).
    """
    boxes = boxes.float()
    if min(image_size) > 1:
        return boxes
    flat = torch.stack([boxes[:, 2] <= boxes[:, 0], boxes[:, 3] <= boxes[:, 1]], dim=1)
    if bool(flat.any()):
        boxes = boxes.clone()
        boxes[:, 2:] += flat.float()
    return boxes


def _stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    # Same counting as the reference (int16 row sums, then int32) so scores match bit for bit.
    inter = (logits > (threshold + offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    union = (logits > (threshold - offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return inter / union


class _CropResult:
    """Survivors of one crop: low-res logits are kept instead of full-size masks."""

    def __init__(self):
        self.low_res: list[torch.Tensor] = []
        self.boxes: list[torch.Tensor] = []
        self.iou: list[torch.Tensor] = []
        self.stability: list[torch.Tensor] = []
        self.points: list[torch.Tensor] = []

    def add(self, low_res, boxes, iou, stability, points):
        self.low_res.append(low_res)
        self.boxes.append(boxes)
        self.iou.append(iou)
        self.stability.append(stability)
        self.points.append(points)

    def cat(self):
        if not self.boxes:
            return None
        return (
            torch.cat(self.low_res),
            torch.cat(self.boxes),
            torch.cat(self.iou),
            torch.cat(self.stability),
            torch.cat(self.points),
        )


@torch.inference_mode()
def _process_crop(
    sam: Sam,
    image: np.ndarray,
    crop_box: list,
    layer_idx: int,
    orig_size: tuple,
    grids: list,
    settings: AutoMaskSettings,
    on_batch,
    counts: FilterCounts,
):
    x0, y0, x1, y1 = crop_box
    crop = np.ascontiguousarray(image[y0:y1, x0:x1, :])
    crop_size = crop.shape[:2]
    embedded = encode_image(sam, crop)
    features, input_size = embedded.features, embedded.input_size
    device = features.device
    dtype = features.dtype
    transform = sam_resize(sam)  # ResizeLongestSide without 0-pixel sides (thin strips)
    threshold = sam.mask_threshold
    orig_h, orig_w = orig_size
    decode_chunk = decode_chunk_size(sam, features)
    shared = share_image(sam, features)
    upsample_chunk = upsample_chunk_size(sam, device, *crop_size)

    points_for_image = grids[layer_idx] * np.array(crop_size)[None, ::-1]
    result = _CropResult()
    for start in range(0, len(points_for_image), settings.points_per_batch):
        runtime.check_interrupt()
        points = points_for_image[start : start + settings.points_per_batch]
        # float32 made on the host: no float64 tensor on the device (MPS has none; precision.py)
        coords = torch.as_tensor(transform.apply_coords(points, crop_size), dtype=torch.float32, device=device)
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=device)
        sparse, _ = sam.prompt_encoder(points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None)
        sparse = sparse.to(dtype)
        # The decoder runs on small pieces of the batch (see point_decoder.prompts_per_chunk);
        # 1. the predicted-IoU filter needs no mask at all, so masks are only made for survivors.
        kept_logits, kept_iou, kept_pts = [], [], []
        for sub in range(0, len(points), decode_chunk):
            tokens = decode_point_tokens(sam, features, sparse[sub : sub + decode_chunk], shared=shared)
            n_prompts, n_out = tokens.iou_pred.shape
            counts.candidates += n_prompts * n_out
            iou_pred = tokens.iou_pred.flatten().float()
            prompt_idx = torch.arange(n_prompts, device=device).repeat_interleave(n_out)
            output_idx = torch.arange(n_out, device=device).repeat(n_prompts)
            if settings.pred_iou_thresh > 0.0:
                keep = iou_pred > settings.pred_iou_thresh
                iou_pred, prompt_idx, output_idx = iou_pred[keep], prompt_idx[keep], output_idx[keep]
            counts.passed_pred_iou += len(iou_pred)
            kept_logits.append(masks_for(sam, tokens, prompt_idx, output_idx).float())
            kept_iou.append(iou_pred)
            kept_pts.append(torch.as_tensor(points[sub : sub + decode_chunk], dtype=torch.float32,
                                            device=device)[prompt_idx])
            del tokens
        low_res, iou_pred, pts = torch.cat(kept_logits), torch.cat(kept_iou), torch.cat(kept_pts)

        # 2. stability and boxes on full-size logits, a chunk at a time
        for c in range(0, low_res.shape[0], upsample_chunk):
            lr = low_res[c : c + upsample_chunk]
            logits = _upsample(sam, lr, input_size, crop_size)
            stability = _stability_score(logits, threshold, settings.stability_score_offset)
            keep = stability >= settings.stability_score_thresh if settings.stability_score_thresh > 0.0 else (
                torch.ones_like(stability, dtype=torch.bool)
            )
            counts.passed_stability += int(keep.sum())
            if not bool(keep.any()):
                continue
            boxes = batched_mask_to_box(logits[keep] > threshold)
            near_edge = is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
            idx = keep.nonzero()[:, 0][~near_edge]
            if idx.numel() == 0:
                continue
            result.add(lr[idx], boxes[~near_edge], iou_pred[c : c + upsample_chunk][idx], stability[idx],
                       pts[c : c + upsample_chunk][idx])
        on_batch()

    merged = result.cat()
    if merged is None:
        return None
    low_res, boxes, iou_pred, stability, pts = merged
    keep = batched_nms(_nms_boxes(boxes, orig_size), iou_pred, torch.zeros_like(iou_pred), iou_threshold=settings.box_nms_thresh)
    crop_t = torch.tensor(crop_box, device=device)
    return {
        "low_res": low_res[keep],
        "input_size": input_size,
        "crop_size": crop_size,
        "crop_box": crop_box,
        "orig_size": orig_size,
        "boxes": uncrop_boxes_xyxy(boxes[keep], crop_box),
        "iou": iou_pred[keep],
        "stability": stability[keep],
        "points": uncrop_points(pts[keep], crop_box),
        "crop_boxes": crop_t[None].expand(len(keep), 4),
    }


def _full_masks(sam: Sam, crop: dict, index: torch.Tensor) -> CompactMasks:
    """Compact full-image masks of one crop's survivors ``index``, upsampled and packed a chunk at a time."""
    x0, y0, _, _ = crop["crop_box"]
    height, width = crop["orig_size"]
    device = crop["low_res"].device
    out = CompactMasks(height, width)
    step = upsample_chunk_size(sam, device, *crop["crop_size"])
    for c in range(0, len(index), step):
        logits = _upsample(sam, crop["low_res"][index[c : c + step]], crop["input_size"], crop["crop_size"])
        out.add(logits > sam.mask_threshold, offset=(x0, y0))
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
    keep = batched_nms(_nms_boxes(boxes, (store.height, store.width)), score_t, torch.zeros_like(score_t), iou_threshold=nms_thresh)
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


def generate_segments(sam: Sam, image: np.ndarray, settings: Optional[AutoMaskSettings] = None,
                      counts: Optional[FilterCounts] = None) -> Segments:
    """Segment everything in one RGB uint8 ``[H,W,3]`` image.

    ``counts``, when given, is filled with how many masks passed each filter.
    """
    counts = counts if counts is not None else FilterCounts()
    settings = (settings or AutoMaskSettings()).validate()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError("generate_segments expects an RGB uint8 array of shape [H, W, 3]")
    orig_size = image.shape[:2]
    grids = build_all_layer_point_grids(
        settings.points_per_side, settings.crop_n_layers, settings.crop_n_points_downscale_factor
    )
    crop_boxes, layer_idxs = generate_crop_boxes(orig_size, settings.crop_n_layers, settings.crop_overlap_ratio)
    total_batches = sum(
        -(-len(grids[layer]) // settings.points_per_batch) for layer in layer_idxs
    )
    bar = runtime.progress(total_batches, "segmenting")
    crops = []
    for crop_box, layer_idx in zip(crop_boxes, layer_idxs):
        if crop_box[2] <= crop_box[0] or crop_box[3] <= crop_box[1]:
            # generate_crop_boxes places crops past the edge of images a few pixels wide (a 1x1
            # image's second crop column starts at x=1); they hold no pixel and add nothing
            bar.update(-(-len(grids[layer_idx]) // settings.points_per_batch))
            continue
        crop = _process_crop(sam, image, crop_box, layer_idx, orig_size, grids, settings, lambda: bar.update(1),
                             counts)
        if crop is not None and len(crop["iou"]):
            crops.append(crop)
    bar.close()
    device = next(sam.parameters()).device
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
        order = batched_nms(_nms_boxes(boxes, orig_size), scores, torch.zeros_like(scores), iou_threshold=settings.crop_nms_thresh)
    else:
        order = torch.arange(len(iou), device=device)

    # Final masks go straight into compact storage, crop by crop, each to its row of ``order``.
    entries = [None] * len(order)
    for i, crop in enumerate(crops):
        rows = (crop_id[order] == i).nonzero()[:, 0]
        if rows.numel():
            made = _full_masks(sam, crop, local_idx[order][rows])
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
