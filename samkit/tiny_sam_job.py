"""The Tiny SAM job: fal ``tiny-sam``'s parameters (FastSAM's), run locally.

``segment_with_prompts(model, image, request)`` segments each image of a batch with the request's
prompts (parsed and checked by ``prompts.py``; one list per image or the same for all):

* FastSAM (``fastsam.py``): everything mode at ``size`` / ``confidence`` / ``iou``; prompts select
  among its masks exactly as ultralytics' ``FastSAMPredictor.prompt`` does.
* SAM family (``sam_prompted.py``; SAM 2 / 2.1: ``sam2_prompted.py``, same rules): prompts
  go to SAM's mask decoder, one object per box (points
  inside a box refine it) plus one for foreground points outside every box; the image embedding
  is cached, so new prompts on the same image skip the encoder. ``confidence`` drops objects
  whose predicted mask quality is lower. ``size`` and ``iou`` do not apply: SAM's encoder input
  size is fixed by the checkpoint, and prompted objects are not de-duplicated.
* No prompt at all (fal's defaults): every object (FastSAM's everything pass; for the SAM family,
  everything mode with segment-anything's default thresholds and the request's ``sampling``:
  ``grid``, ``hierarchical`` or ``object-aware`` with a FastSAM proposal model, ``sampling_params``).

Outputs, all at the input's resolution, on ``runtime.output_device()``:

* ``image`` ``[B,H,W,3]``: the objects tinted over the input (fal's "combined image of all
  detected masks"), deterministic colours;
* ``mask`` ``[B,H,W]``: union of each image's objects;
* ``object_masks`` ``[N,H,W]``: every object of every image, image after image, by the rule of
  ``outputs.py``: each image contributes its objects, and an image with none exactly one empty
  mask (image i's masks are rows ``outputs.mask_rows(counts)[i]`` up to the next). Objects picked
  by boxes come first, in box order, then the others in the model's order; without boxes or
  foreground points (everything mode) largest first;
* ``boxes``: one list per image (core ``BOUNDING_BOX`` as core SAM3 outputs it) of
  ``{"x", "y", "width", "height", "score"}`` in pixels, the tight box of each object's mask, in
  ``object_masks`` order; ``[]`` for an image with no object (its empty mask has no box), so
  ``len(boxes[i])`` is image i's object count. ``score`` is FastSAM's confidence or SAM's
  predicted mask quality.

Objects whose mask is empty are dropped. Masks are kept compact (``compact.py``) until every
image is done; the outputs are then allocated once, after a check that they fit in free memory
(``outputs.OutputTooLarge`` otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import outputs, precision, runtime
from .compact import CompactMasks
from .images import as_image_batch, to_uint8_rgb
from .loaded_model import LoadedModel
from .overlay import paint_labels
from .painting import order_by_area
from .prompts import ImagePrompts, parse_prompts
from .automask_sampling import as_proposals, check as check_everything
from .sampling_params import DEFAULT_SAMPLING, check_sampling
from .tiny_sam_params import CONFIDENCE, IOU, NO_BOX, NO_LABEL, NO_POINT, SIZE


@dataclass
class TinySamRequest:
    """fal ``tiny-sam``'s parameters plus ``iou`` and the optional prompt sockets of the node."""

    size: int = SIZE.default
    confidence: float = CONFIDENCE.default
    iou: float = IOU.default
    box_prompt: Any = NO_BOX.text
    point_prompt: Any = NO_POINT.text
    point_label: Any = NO_LABEL.text
    bboxes: Any = None
    positive_coords: Any = None
    negative_coords: Any = None
    xyxy_boxes: Any = None
    #: everything mode's prompts for SAM-family models when there is no prompt (sampling_params)
    sampling: str = DEFAULT_SAMPLING

    def validate(self) -> "TinySamRequest":
        for param in (SIZE, CONFIDENCE, IOU):
            param.check(getattr(self, param.name))
        check_sampling(self.sampling)
        return self

    def prompts_for(self, batch: int, width: int, height: int) -> list[ImagePrompts]:
        return parse_prompts(batch, width, height, point_prompt=self.point_prompt, point_label=self.point_label,
                             box_prompt=self.box_prompt, bboxes=self.bboxes, positive_coords=self.positive_coords,
                             negative_coords=self.negative_coords, xyxy_boxes=self.xyxy_boxes)


@dataclass
class TinySamResult:
    image: torch.Tensor  # [B,H,W,3] objects tinted over the input
    mask: torch.Tensor  # [B,H,W] union of each image's objects
    object_masks: torch.Tensor  # [N,H,W]; each image its objects, or one empty mask when it has none
    boxes: list  # per image: [{x, y, width, height, score}]
    counts: list = field(default_factory=list)  # objects per image


def find_objects(model: LoadedModel, image, prompts: ImagePrompts, request: TinySamRequest,
                 proposals=None) -> tuple[CompactMasks, torch.Tensor]:
    """One RGB uint8 image's non-empty objects (compact masks, scores) in output order: what the node
    outputs for it, and what the editor's live preview (``preview.py``) shows. ``proposals``: the
    FastSAM model object-aware sampling takes its boxes from, when there is no prompt."""
    if model.is_fastsam:
        from .fastsam import segment_prompted

        found = segment_prompted(model, image, prompts, request.size, request.confidence, request.iou)
    elif model.is_sam:
        from .sam_prompted import segment_prompted

        found = segment_prompted(model, image, prompts, request.confidence, sampling=request.sampling,
                                 proposals=proposals)
    elif model.is_sam2:
        from .sam2_prompted import segment_prompted

        found = segment_prompted(model, image, prompts, request.confidence, sampling=request.sampling,
                                 proposals=proposals)
    else:
        raise ValueError(f"Tiny SAM cannot run a {model.family!r} model; load FastSAM, MobileSAM, TinySAM, SAM or SAM 2")
    masks = found.masks if isinstance(found.masks, CompactMasks) else CompactMasks.from_dense(found.masks)
    scores = found.scores
    del found  # dense masks go now: only compact ones wait for the other images
    keep = masks.areas > 0
    masks, scores = masks[keep], scores[keep.to(scores.device)]
    if not (prompts.boxes or prompts.has_positive):  # everything mode: largest first
        order = order_by_area(masks.areas)
        masks, scores = masks[order], scores[order.to(scores.device)]
    return masks, scores


def _boxes(masks: CompactMasks, scores: torch.Tensor) -> list[dict]:
    """Tight ``{x, y, width, height, score}`` boxes (pixels, inclusive) of non-empty compact masks."""
    return [{"x": x0, "y": y0, "width": x1 - x0 + 1, "height": y1 - y0 + 1, "score": round(float(s), 4)}
            for (x0, y0, x1, y1), s in zip(masks.boxes.tolist(), scores.tolist())]


_OUTPUTS = outputs.BatchOutputs("Tiny SAM", "objects", "object_masks", "image and mask", 4)


def _remedies(per_image: list[ImagePrompts]):
    everything = any(not (p.boxes or p.has_positive) for p in per_image)

    def remedies(free: int) -> list[str]:
        fixes = ["prompt only the objects you want (points or boxes) instead of segmenting everything"] if everything else []
        return fixes + ["segment a smaller image" + (" or fewer images at once" if len(per_image) > 1 else "")]

    return remedies


def segment_with_prompts(model: LoadedModel, image: torch.Tensor, request: TinySamRequest | None = None,
                         proposals=None) -> TinySamResult:
    """Tiny SAM on each image of ``image`` (IMAGE ``[B,H,W,C]``); see the module docstring for the outputs.

    ``proposals``: the FastSAM ``LoadedModel`` (or boxes function) object-aware sampling takes its
    boxes from, for SAM-family models on images without a prompt. Raises ``ValueError`` for bad
    prompts or settings (object-aware without proposals included) and ``outputs.OutputTooLarge``
    when the outputs would not fit in the output device's free memory.
    """
    request = (request or TinySamRequest()).validate()
    batch = as_image_batch(image)
    b, h, w, _ = batch.shape
    per_image = request.prompts_for(b, w, h)  # bad prompts fail before any model work
    everything = any(not (p.boxes or p.has_positive) for p in per_image)
    if model.samples_prompts and everything:
        check_everything(request.sampling, proposals)  # object-aware needs them: fail before model work
    proposal_model = proposals if getattr(proposals, "is_fastsam", False) else None
    proposals = as_proposals(proposals) if model.samples_prompts and everything else None
    out = runtime.output_device()
    remedies = _remedies(per_image)
    _OUTPUTS.ensure_fits([], b, h, w, out, remedies)
    runtime.prepare_model(model)
    if proposal_model is not None and proposals is not None:
        runtime.prepare_model(proposal_model)

    found: list[tuple[CompactMasks, torch.Tensor]] = []
    bar = runtime.progress(b, "Tiny SAM")
    try:
        for i in range(b):
            runtime.check_interrupt()
            with precision.for_model(model):  # model work only: the outputs below stay exact fp32
                found.append(find_objects(model, to_uint8_rgb(batch[i]), per_image[i], request, proposals))
            _OUTPUTS.ensure_fits([len(m) for m, _ in found], b - i - 1, h, w, out, remedies)
            bar.update(1)
    finally:
        bar.close()

    counts = [len(m) for m, _ in found]
    rows = outputs.mask_rows(counts)
    images = torch.empty((b, h, w, 3), dtype=batch.dtype, device=out)
    unions = torch.zeros((b, h, w), dtype=torch.float32, device=out)
    object_masks = torch.zeros((rows[-1], h, w), dtype=torch.float32, device=out)
    for i, (masks, _) in enumerate(found):
        labels = masks.label_map(order_by_area(masks.areas).tolist())  # smaller objects on top
        images[i].copy_(paint_labels(batch[i], labels, len(masks)))
        unions[i].copy_(torch.from_numpy(labels >= 0))
        del labels
        masks.write(object_masks[rows[i] : rows[i + 1]])
    return TinySamResult(
        image=images,
        mask=unions,
        object_masks=object_masks,
        boxes=[_boxes(masks, scores) for masks, scores in found],
        counts=counts,
    )
