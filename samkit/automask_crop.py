"""One crop of everything mode: prompts in, the crop's de-duplicated masks out, for any model family.

:class:`CropRun` encodes the crop once (``EverythingBackend.encode``), then takes prompts in
batches of ``points_per_batch`` (points or boxes, crop pixels) and runs segment-anything's
``SamAutomaticMaskGenerator`` filters on what the backend decodes: predicted IoU (in the backend,
before any mask), stability score, the "near the crop edge" rule, and at the end box NMS within
the crop. Full-size logits are made a chunk at a time and only their low-resolution logits kept.

Which prompts to decode is the caller's choice (``automask_sampling.py``); ``confident`` asks a
pass to also record where surviving masks are confident (each mask's pixels whose logit is above
that quantile of the mask's own pixels' logits), the hierarchical sampler's "already covered" map.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
from torchvision.ops.boxes import batched_nms
from segment_anything.utils.amg import is_box_near_crop_edge, uncrop_boxes_xyxy, uncrop_points

from . import runtime
from .automask_settings import AutoMaskSettings
from .everything_backend import Candidates, EverythingBackend


def nms_boxes(boxes: torch.Tensor, image_size: tuple) -> torch.Tensor:
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


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    # Same counting as the reference (int16 row sums, then int32) so scores match bit for bit.
    inter = (logits > (threshold + offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    union = (logits > (threshold - offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return inter / union


def mask_boxes(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """``batched_mask_to_box(logits > threshold)`` (segment-anything's amg.py: inclusive xyxy pixel
    corners, int64, ``[0, 0, 0, 0]`` for an empty mask) from each mask's row and column maxima,
    without making the ``[N, H, W]`` bool masks: the boxes took a fifth of the grid's time on a CPU
    (thresholded copies, then a max over each axis), this about a tenth of that."""
    rows = logits.amax(dim=-1) > threshold  # [N, H]: rows holding a mask pixel
    cols = logits.amax(dim=-2) > threshold  # [N, W]
    h, w = rows.shape[-1], cols.shape[-1]
    ys = torch.arange(h, device=logits.device)
    xs = torch.arange(w, device=logits.device)
    bottom, top = (rows * ys).amax(-1), (ys + h * ~rows).amin(-1)
    right, left = (cols * xs).amax(-1), (xs + w * ~cols).amin(-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    empty = (right < left) | (bottom < top)
    return boxes * (~empty).unsqueeze(-1)


class CropRun:
    """Everything mode on one crop of one image (see the module docstring)."""

    def __init__(self, backend: EverythingBackend, image: np.ndarray, crop_box: list, orig_size: tuple,
                 settings: AutoMaskSettings, counts, on_batch: Callable[[], None]):
        x0, y0, x1, y1 = crop_box
        self.backend, self.crop_box, self.orig_size = backend, crop_box, orig_size
        self.settings, self.counts, self.on_batch = settings, counts, on_batch
        self.crop_rgb = np.ascontiguousarray(image[y0:y1, x0:x1, :])
        self.enc = backend.encode(self.crop_rgb)
        self.crop_size = self.enc.crop_size
        self.device = self.enc.device
        self._parts: list[tuple] = []  # (low_res, boxes, iou, stability, prompt xy) of survivors

    def batches(self, n: int) -> int:
        """Progress steps a pass over ``n`` prompts takes."""
        return -(-n // self.settings.points_per_batch)

    @torch.inference_mode()
    def run(self, prompts: np.ndarray, boxes: bool = False, confident: Optional[float] = None):
        """Decode ``prompts`` (float64 ``[N,2]`` points or ``[N,4]`` xyxy boxes, crop pixels) in batches.

        Returns the bool ``[h, w]`` map (on the crop's device) of where surviving masks are
        confident when ``confident`` (a quantile, 0..1) is given, else None.
        """
        covered = torch.zeros(self.crop_size, dtype=torch.bool, device=self.device) if confident is not None else None
        step = self.settings.points_per_batch
        for start in range(0, len(prompts), step):
            runtime.check_interrupt()
            batch = prompts[start : start + step]
            if boxes:
                found = self.backend.decode_boxes(self.enc, batch, self.settings.pred_iou_thresh)
                xy = (batch[:, :2] + batch[:, 2:]) / 2  # a box mask's "point": the box centre
            else:
                found = self.backend.decode_points(self.enc, batch, self.settings.pred_iou_thresh)
                xy = batch
            self._keep(found, torch.as_tensor(xy, dtype=torch.float32, device=self.device), confident, covered)
            self.on_batch()
        return covered

    def _keep(self, found: Candidates, prompt_xy: torch.Tensor, confident, covered) -> None:
        """Stability and boxes on full-size logits, a chunk at a time; survivors keep their low-res logits."""
        s, backend = self.settings, self.backend
        self.counts.candidates += found.decoded
        self.counts.passed_pred_iou += len(found)
        threshold = backend.mask_threshold
        pts = prompt_xy[found.prompt_index]
        orig_h, orig_w = self.orig_size
        chunk = backend.upsample_chunk(self.enc)
        for c in range(0, len(found), chunk):
            low_res = found.low_res[c : c + chunk]
            logits = backend.upsample(self.enc, low_res)
            stability = stability_score(logits, threshold, s.stability_score_offset)
            keep = stability >= s.stability_score_thresh if s.stability_score_thresh > 0.0 else (
                torch.ones_like(stability, dtype=torch.bool))
            self.counts.passed_stability += int(keep.sum())
            if not bool(keep.any()):
                continue
            if covered is not None:
                self._cover(covered, logits[keep], threshold, confident)
            boxes = mask_boxes(logits, threshold)[keep]
            near_edge = is_box_near_crop_edge(boxes, self.crop_box, [0, 0, orig_w, orig_h])
            idx = keep.nonzero()[:, 0][~near_edge]
            if idx.numel() == 0:
                continue
            self._parts.append((low_res[idx], boxes[~near_edge], found.iou[c : c + chunk][idx], stability[idx],
                                pts[c : c + chunk][idx]))

    @staticmethod
    def _cover(covered: torch.Tensor, logits: torch.Tensor, threshold: float, share: float) -> None:
        """Mark each mask's confident pixels: logits above the ``share`` quantile of its own mask pixels' logits."""
        for mask_logits in logits:
            inside = mask_logits[mask_logits > threshold].float()
            if inside.numel():
                level = inside.kthvalue(max(1, math.ceil(share * inside.numel()))).values
                covered |= mask_logits > level

    def finish(self) -> Optional[dict]:
        """The crop's survivors after box NMS, in image coordinates; None when nothing survived.

        The features are released here: only low-res logits and the crop's geometry stay.
        """
        enc = self.enc.released()
        self.enc = enc
        if not self._parts:
            return None
        low_res, boxes, iou, stability, pts = (torch.cat(list(p)) for p in zip(*self._parts))
        self._parts = []
        keep = batched_nms(nms_boxes(boxes, self.orig_size), iou, torch.zeros_like(iou),
                           iou_threshold=self.settings.box_nms_thresh)
        crop_t = torch.tensor(self.crop_box, device=self.device)
        return {
            "low_res": low_res[keep],
            "enc": enc,
            "crop_box": self.crop_box,
            "orig_size": self.orig_size,
            "boxes": uncrop_boxes_xyxy(boxes[keep], self.crop_box),
            "iou": iou[keep],
            "stability": stability[keep],
            "points": uncrop_points(pts[keep], self.crop_box),
            "crop_boxes": crop_t[None].expand(len(keep), 4),
        }
