"""FastSAM through ultralytics: everything mode, then FastSAM's own prompt selection.

FastSAM prompts never reach a decoder. The model segments every instance once (ultralytics'
``FastSAM`` predictor at ``imgsz=size``, ``conf=confidence``, ``iou=iou``, ``retina_masks=True`` so
masks come out at the input's resolution), and prompts then *select* among those masks.
:func:`select` is ultralytics' ``FastSAMPredictor.prompt`` (8.4) rule for rule, so the same
checkpoint and prompts give the same masks as ``ultralytics.FastSAM(...)(image, bboxes=...,
points=..., labels=...)``:

* each box (xyxy, truncated to whole pixels, clipped to the image) picks the one mask with the
  highest IoU between the mask and the box, counting only mask pixels inside the box as overlap;
* foreground points pick every mask containing any of them; if there are only background points,
  every mask is picked first; then any mask containing a background point is dropped from the
  point selection (points are truncated to whole pixels);
* the result is the union of the box picks and the point picks, in the model's order.

Running the model once and selecting here (instead of passing prompts to ultralytics) is what
lets the pack use different prompts per image and report which box picked which mask; the cost
is the same selection work ultralytics would do.
"""

from __future__ import annotations

import numpy as np
import torch

from .loaded_model import LoadedModel
from .precision import fastsam_half_kwargs
from .prompts import ImagePrompts
from .results import Masks
from .tiny_sam_params import CONFIDENCE, IOU, SIZE


def predict_everything(model: LoadedModel, image: np.ndarray, size: int = SIZE.default,
                       confidence: float = CONFIDENCE.default, iou: float = IOU.default) -> Masks:
    """FastSAM's everything pass on one RGB uint8 ``[H,W,3]`` image: 0/1 uint8 masks (ultralytics' own dtype)
    and detection confidences, in the model's order (highest confidence first)."""
    h, w = image.shape[:2]
    bgr = np.ascontiguousarray(image[..., ::-1])  # ultralytics reads numpy images as OpenCV BGR
    kwargs = dict(imgsz=int(size), conf=float(confidence), iou=float(iou), retina_masks=True,
                  device=str(model.device), verbose=False, **fastsam_half_kwargs(model.dtype))
    result = model.runner.predict(bgr, **kwargs)[0]
    if result.masks is None or len(result) == 0:
        device = result.boxes.data.device if result.boxes is not None else torch.device("cpu")
        return Masks.empty(h, w, device, dtype=torch.uint8)
    masks = result.masks.data
    if masks.shape[1:] != (h, w):  # retina masks are full size already; ultralytics' prompt() guards the same way
        from ultralytics.utils.ops import scale_masks

        masks = (scale_masks(masks[None].float(), (h, w))[0] > 0.5).byte()
    return Masks(masks, result.boxes.conf.float())


def _truncated(rows) -> list[list[int]]:
    """Coordinates truncated toward zero, as ultralytics' float-to-int tensor conversion does."""
    return [[int(v) for v in row] for row in rows]


def select(masks: torch.Tensor, prompts: ImagePrompts) -> tuple[torch.Tensor, list[int]]:
    """FastSAM's prompt selection over ``masks`` ``[N,H,W]`` (uint8 or bool).

    Returns the bool selection ``[N]`` (exactly ultralytics' ``prompt`` result) and, for the
    pack's object order, the indices picked by each box in box order (a box that picks the same
    mask as an earlier box adds nothing).
    """
    n, h, w = masks.shape
    device = masks.device
    chosen = torch.zeros(n, dtype=torch.bool, device=device)
    by_box: list[int] = []
    if n == 0:
        return chosen, by_box
    if prompts.boxes:
        # ultralytics: int32 conversion (truncation toward zero), then clip to [0, w] × [0, h]. The
        # truncation happens here in Python: no float64 tensor on the device (MPS has none)
        boxes = torch.as_tensor(_truncated(prompts.boxes), dtype=torch.int32, device=device)
        boxes[:, 0].clamp_(0, w)
        boxes[:, 1].clamp_(0, h)
        boxes[:, 2].clamp_(0, w)
        boxes[:, 3].clamp_(0, h)
        box_areas = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 2] - boxes[:, 0])
        inside = torch.stack([masks[:, b[1] : b[3], b[0] : b[2]].sum(dim=(1, 2)) for b in boxes.tolist()])
        full = masks.sum(dim=(1, 2))
        union = box_areas[:, None] + full - inside
        best = torch.argmax(inside / union, dim=1)
        chosen[best] = True
        for i in best.tolist():
            if i not in by_box:
                by_box.append(i)
    if prompts.points:
        coords = torch.as_tensor(_truncated(prompts.points), dtype=torch.int64, device=device)
        coords[:, 0].clamp_(0, w - 1)
        coords[:, 1].clamp_(0, h - 1)
        labels = torch.as_tensor(prompts.labels, dtype=torch.int32, device=device)
        under = masks[:, coords[:, 1], coords[:, 0]].bool()
        if labels.sum() == 0:  # background points only: start from every mask
            picked = torch.ones(n, dtype=torch.bool, device=device)
        else:
            picked = under[:, labels == 1].any(1)
        picked &= ~under[:, labels == 0].any(1)
        chosen |= picked
    return chosen, by_box


def segment_prompted(model: LoadedModel, image: np.ndarray, prompts: ImagePrompts, size: int = SIZE.default,
                     confidence: float = CONFIDENCE.default, iou: float = IOU.default) -> Masks:
    """FastSAM objects for one image (bool masks): every instance without prompts, else FastSAM's selection.

    Object order: the masks picked by boxes in box order, then the other selected masks in the
    model's order.
    """
    found = predict_everything(model, image, size, confidence, iou)
    if prompts.empty:
        order = torch.arange(len(found), device=found.masks.device)
    else:
        chosen, by_box = select(found.masks, prompts)
        rest = [i for i in torch.nonzero(chosen).flatten().tolist() if i not in by_box]
        order = torch.as_tensor(by_box + rest, dtype=torch.long, device=found.masks.device)
    return Masks(found.masks[order].bool(), found.scores[order])


def segment_everything(model: LoadedModel, image: np.ndarray, size: int = SIZE.default,
                       confidence: float = CONFIDENCE.default, iou: float = IOU.default) -> torch.Tensor:
    """Bool ``[N,H,W]`` instance masks of an RGB uint8 image (the Segmentation Map node uses this)."""
    return predict_everything(model, image, size, confidence, iou).masks.bool()
