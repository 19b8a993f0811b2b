"""The Tiny SAM job: fal ``tiny-sam``'s parameters, run locally with FastSAM or a SAM-family model.

* FastSAM: everything mode at ``size`` with ``confidence`` and ``iou``; prompts select masks
  the way FastSAM does (see ``fastsam.py``). No prompt → every instance.
* SAM family (MobileSAM, TinySAM, vit_b/l/h): prompts go to the mask decoder. Each box is one
  object, and all boxes run in one decoder call; a point joins every box that contains it.
  Without boxes, all points together describe one object (SAM's click-to-refine). Objects
  whose predicted quality is below ``confidence`` are dropped. The image embedding is cached,
  so editing prompts re-runs only the decoder. ``size`` and ``iou`` do not apply (SAM's
  encoder has a fixed input size). No prompt → SAM's everything mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import runtime
from .automask import AutoMaskSettings, generate_segments
from .embedding_cache import embeddings
from .images import as_image_batch, to_uint8_rgb
from .models import LoadedModel
from .painting import area_order, palette
from .prompts import ImagePrompts, parse_prompts, xywh_to_xyxy

OVERLAY_ALPHA = 0.6  # how strongly object colours cover the image in the combined image


@dataclass
class TinySamRequest:
    size: int = 1024
    confidence: float = 0.4
    iou: float = 0.9
    box_prompt: Any = "[[0,0,0,0]]"
    point_prompt: Any = "[[0,0]]"
    point_label: Any = "[0]"
    bboxes: Any = None
    positive_coords: Any = None
    negative_coords: Any = None

    def validate(self) -> "TinySamRequest":
        if not 32 <= int(self.size) <= 4096:
            raise ValueError("size must be between 32 and 4096 pixels")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError("confidence must be between 0 and 1")
        if not 0.0 <= self.iou <= 1.0:
            raise ValueError("iou must be between 0 and 1")
        return self


@dataclass
class TinySamResult:
    image: torch.Tensor  # [B,H,W,3] objects painted over the input
    mask: torch.Tensor  # [B,H,W] union of the objects
    object_masks: torch.Tensor  # [N,H,W]; an image with no object contributes one empty mask
    boxes: list  # per image: [{x, y, width, height}] (core BOUNDING_BOX)
    counts: list


def _group_prompts(prompts: ImagePrompts) -> list[tuple[list, list, tuple | None]]:
    """Objects to decode: one per box (with the points inside it), else one for all points.

    Positive points outside every box form one more object, with the negative points.
    """
    if not prompts.boxes:
        return [(prompts.points, prompts.labels, None)]
    groups, used = [], [False] * len(prompts.points)
    for box in prompts.boxes:
        x0, y0, x1, y1 = xywh_to_xyxy(box)
        inside = [i for i, (x, y) in enumerate(prompts.points) if x0 <= x <= x1 and y0 <= y <= y1]
        for i in inside:
            used[i] = True
        groups.append(([prompts.points[i] for i in inside], [prompts.labels[i] for i in inside], (x0, y0, x1, y1)))
    rest = [i for i, u in enumerate(used) if not u or prompts.labels[i] == 0]
    if any(prompts.labels[i] == 1 and not used[i] for i in rest):
        groups.append(([prompts.points[i] for i in rest], [prompts.labels[i] for i in rest], None))
    return groups


def _decode(sam, features, input_size, size_hw, groups) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask decoder call for objects that all have a box, or all have none."""
    from segment_anything.utils.transforms import ResizeLongestSide

    device, dtype = features.device, features.dtype
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    n_pts = max(len(g[0]) for g in groups)
    point_arg = box_arg = None
    if n_pts:
        # pad point lists with SAM's "not a point" label (-1)
        coords = np.zeros((len(groups), n_pts, 2))
        labels = -np.ones((len(groups), n_pts))
        for i, (pts, lbs, _box) in enumerate(groups):
            coords[i, : len(pts)] = pts
            labels[i, : len(lbs)] = lbs
        pt = torch.as_tensor(transform.apply_coords(coords, size_hw), dtype=torch.float32, device=device)
        point_arg = (pt, torch.as_tensor(labels, dtype=torch.int, device=device))
    if groups[0][2] is not None:
        boxes = np.array([g[2] for g in groups], dtype=np.float64)
        box_arg = torch.as_tensor(transform.apply_boxes(boxes, size_hw), dtype=torch.float32, device=device)
    # A single click is ambiguous: ask for three masks and keep the best one, as SAM advises.
    multimask = box_arg is None and len(groups) == 1 and len(groups[0][0]) == 1
    sparse, dense = sam.prompt_encoder(points=point_arg, boxes=box_arg, masks=None)
    low_res, scores = sam.mask_decoder(
        image_embeddings=features,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse.to(dtype),
        dense_prompt_embeddings=dense.to(dtype),
        multimask_output=multimask,
    )
    scores = scores.float()
    best = scores.argmax(dim=1)
    rows = torch.arange(len(groups), device=device)
    low_res = low_res[rows, best].float()
    masks = sam.postprocess_masks(low_res[:, None], input_size, size_hw)[:, 0] > sam.mask_threshold
    return masks, scores[rows, best]


@torch.inference_mode()
def _sam_objects(model: LoadedModel, image: np.ndarray, prompts: ImagePrompts, request: TinySamRequest) -> torch.Tensor:
    sam = model.runner
    h, w = image.shape[:2]
    if prompts.empty:
        return generate_segments(sam, image, AutoMaskSettings()).masks
    features, input_size = embeddings.get(model, image)
    groups = _group_prompts(prompts)
    masks, scores = [], []
    for subset in ([g for g in groups if g[2] is not None], [g for g in groups if g[2] is None]):
        if subset:
            m, s = _decode(sam, features, input_size, (h, w), subset)
            masks.append(m)
            scores.append(s)
    masks, scores = torch.cat(masks), torch.cat(scores)
    return masks[scores >= request.confidence]


def _objects(model: LoadedModel, image: np.ndarray, prompts: ImagePrompts, request: TinySamRequest) -> torch.Tensor:
    if model.is_fastsam:
        from .fastsam import segment_with_prompts

        return segment_with_prompts(model, image, int(request.size), request.confidence, request.iou,
                                    prompts.points, prompts.labels, [xywh_to_xyxy(b) for b in prompts.boxes])
    if model.is_sam:
        return _sam_objects(model, image, prompts, request)
    raise ValueError(f"model family {model.family!r} cannot take prompts")


def _boxes_of(masks: torch.Tensor) -> list:
    out = []
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(xs) == 0:
            continue
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
        out.append({"x": x0, "y": y0, "width": x1 - x0 + 1, "height": y1 - y0 + 1})
    return out


def combined_image(image: torch.Tensor, masks: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Objects painted over ``image`` ``[H,W,3]`` in distinct colours, largest first."""
    out = image.clone()
    colours = torch.as_tensor(palette(len(masks), seed), dtype=torch.float32, device=image.device) / 255.0
    for i, m in enumerate(masks.to(image.device)):
        out[m] = out[m] * (1 - OVERLAY_ALPHA) + colours[i] * OVERLAY_ALPHA
    return out


def segment_with_prompts(model: LoadedModel, image: torch.Tensor, request: TinySamRequest | None = None) -> TinySamResult:
    request = (request or TinySamRequest()).validate()
    batch = as_image_batch(image)
    b, h, w, _ = batch.shape
    per_image = parse_prompts(b, w, h, request.point_prompt, request.point_label, request.box_prompt,
                              request.bboxes, request.positive_coords, request.negative_coords)
    out = runtime.output_device()
    runtime.prepare_model(model)
    images, unions, objects, boxes, counts = [], [], [], [], []
    for i in range(b):
        runtime.check_interrupt()
        masks = _objects(model, to_uint8_rgb(batch[i]), per_image[i], request).to(out)
        masks = masks[area_order(masks)]
        counts.append(int(masks.shape[0]))
        images.append(combined_image(batch[i].to(out), masks))
        unions.append(masks.any(0).float() if len(masks) else torch.zeros((h, w), device=out))
        objects.append(masks.float() if len(masks) else torch.zeros((1, h, w), device=out))
        boxes.append(_boxes_of(masks))
    return TinySamResult(
        image=torch.stack(images),
        mask=torch.stack(unions),
        object_masks=torch.cat(objects),
        boxes=boxes[0] if b == 1 else boxes,
        counts=counts,
    )
