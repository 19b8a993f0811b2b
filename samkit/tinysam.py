"""The Tiny SAM job: fal ``tiny-sam``'s parameters (FastSAM's), run locally.

``segment_with_prompts(model, image, request)`` segments each image of a batch with the request's
prompts (parsed and checked by ``prompts.py``; one list per image or the same for all):

* FastSAM (``fastsam.py``): everything mode at ``size`` / ``confidence`` / ``iou``; prompts select
  among its masks exactly as ultralytics' ``FastSAMPredictor.prompt`` does.
* SAM family (``sam_prompted.py``): prompts go to SAM's mask decoder, one object per box (points
  inside a box refine it) plus one for foreground points outside every box; the image embedding
  is cached, so new prompts on the same image skip the encoder. ``confidence`` drops objects
  whose predicted mask quality is lower. ``size`` and ``iou`` do not apply: SAM's encoder input
  size is fixed by the checkpoint, and prompted objects are not de-duplicated.
* No prompt at all (fal's defaults): every object (FastSAM's everything pass; for the SAM family,
  segment-anything's automatic mask generator with its default settings).

Outputs, all at the input's resolution, on ``runtime.output_device()``:

* ``image`` ``[B,H,W,3]``: the objects tinted over the input (fal's "combined image of all
  detected masks"), deterministic colours;
* ``mask`` ``[B,H,W]``: union of each image's objects;
* ``object_masks`` ``[N,H,W]``: every object of every image, image after image. Objects picked by
  boxes come first, in box order, then the others in the model's order; without boxes or
  foreground points (everything mode) largest first. If the whole batch has no object, it is one
  empty mask, so the shape stays valid for other nodes;
* ``boxes``: one list per image (core ``BOUNDING_BOX`` as core SAM3 outputs it) of
  ``{"x", "y", "width", "height", "score"}`` in pixels, the tight box of each object's mask, in
  ``object_masks`` order. ``score`` is FastSAM's confidence or SAM's predicted mask quality.

Objects whose mask is empty are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import precision, runtime
from .images import as_image_batch, to_uint8_rgb
from .models import LoadedModel
from .overlay import paint_objects
from .painting import area_order
from .prompts import ImagePrompts, parse_prompts


@dataclass
class TinySamRequest:
    """fal ``tiny-sam``'s parameters plus ``iou`` and the optional prompt sockets of the node."""

    size: int = 1024
    confidence: float = 0.4
    iou: float = 0.9
    box_prompt: Any = "[[0,0,0,0]]"
    point_prompt: Any = "[[0,0]]"
    point_label: Any = "[0]"
    bboxes: Any = None
    positive_coords: Any = None
    negative_coords: Any = None
    xyxy_boxes: Any = None

    def validate(self) -> "TinySamRequest":
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 32 <= self.size <= 4096:
            raise ValueError(f"size must be a whole number of pixels from 32 to 4096, got {self.size!r}")
        for name in ("confidence", "iou"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number from 0 to 1, got {value!r}")
        return self

    def prompts_for(self, batch: int, width: int, height: int) -> list[ImagePrompts]:
        return parse_prompts(batch, width, height, point_prompt=self.point_prompt, point_label=self.point_label,
                             box_prompt=self.box_prompt, bboxes=self.bboxes, positive_coords=self.positive_coords,
                             negative_coords=self.negative_coords, xyxy_boxes=self.xyxy_boxes)


@dataclass
class TinySamResult:
    image: torch.Tensor  # [B,H,W,3] objects tinted over the input
    mask: torch.Tensor  # [B,H,W] union of each image's objects
    object_masks: torch.Tensor  # [N,H,W]; [1,H,W] empty when the batch has no object
    boxes: list  # per image: [{x, y, width, height, score}]
    counts: list = field(default_factory=list)  # objects per image


def mask_boxes(masks: torch.Tensor, scores: torch.Tensor) -> list[dict]:
    """Tight ``{x, y, width, height, score}`` boxes of non-empty bool masks ``[N,H,W]``."""
    if masks.shape[0] == 0:
        return []
    rows = masks.any(dim=2)  # [N,H]
    cols = masks.any(dim=1)  # [N,W]
    h, w = masks.shape[1:]
    y0 = rows.int().argmax(dim=1)
    y1 = h - 1 - rows.flip(1).int().argmax(dim=1)
    x0 = cols.int().argmax(dim=1)
    x1 = w - 1 - cols.flip(1).int().argmax(dim=1)
    values = torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dim=1).tolist()
    return [{"x": x, "y": y, "width": bw, "height": bh, "score": round(float(s), 4)}
            for (x, y, bw, bh), s in zip(values, scores.tolist())]


def _objects(model: LoadedModel, image, prompts: ImagePrompts, request: TinySamRequest):
    if model.is_fastsam:
        from .fastsam import segment_prompted

        found = segment_prompted(model, image, prompts, request.size, request.confidence, request.iou)
    elif model.is_sam:
        from .sam_prompted import segment_prompted

        found = segment_prompted(model, image, prompts, request.confidence)
    else:
        raise ValueError(f"Tiny SAM cannot run a {model.family!r} model; load FastSAM, MobileSAM, TinySAM or SAM")
    masks, scores = found.masks, found.scores
    keep = masks.flatten(1).any(dim=1)
    masks, scores = masks[keep], scores[keep]
    if not (prompts.boxes or prompts.has_positive):  # everything mode: largest first
        order = area_order(masks)
        masks, scores = masks[order], scores[order]
    return masks, scores


def segment_with_prompts(model: LoadedModel, image: torch.Tensor, request: TinySamRequest | None = None) -> TinySamResult:
    request = (request or TinySamRequest()).validate()
    batch = as_image_batch(image)
    b, h, w, _ = batch.shape
    per_image = request.prompts_for(b, w, h)  # bad prompts fail before any model work
    out = runtime.output_device()
    runtime.prepare_model(model)

    images, unions, objects, boxes, counts = [], [], [], [], []
    bar = runtime.progress(b, "Tiny SAM")
    try:
        for i in range(b):
            runtime.check_interrupt()
            with precision.for_model(model):  # model work only: the outputs below stay exact fp32
                masks, scores = _objects(model, to_uint8_rgb(batch[i]), per_image[i], request)
            counts.append(int(masks.shape[0]))
            boxes.append(mask_boxes(masks, scores))
            images.append(paint_objects(batch[i].to(masks.device), masks).to(out))
            unions.append(masks.any(dim=0).to(out) if counts[-1] else torch.zeros((h, w), dtype=torch.bool, device=out))
            if counts[-1]:
                objects.append(masks.to(out))  # bool across the bus: a quarter of the bytes of float
            bar.update(1)
    finally:
        bar.close()
    object_masks = torch.cat(objects).float() if objects else torch.zeros((1, h, w), dtype=torch.float32, device=out)
    return TinySamResult(
        image=torch.stack(images),
        mask=torch.stack(unions).float(),
        object_masks=object_masks,
        boxes=boxes,
        counts=counts,
    )
