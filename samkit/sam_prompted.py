"""Point and box prompts for the SAM family (SAM vit_b/l/h, MobileSAM, TinySAM): the mask decoder path.

The image is encoded once (``SamPredictor.set_image``'s exact preprocessing) and the embedding is
cached (see ``embedding_cache.py``); prompts then only run the prompt encoder and mask decoder,
with segment-anything's ``ResizeLongestSide`` transforms and ``Sam.postprocess_masks``, so one
object's mask is the one ``SamPredictor.predict`` gives for the same prompt.

How prompts become objects (one mask each):

* **Boxes**: each box is one object. A point that lies inside a box (edges included) joins that
  box's prompt, foreground or background, so clicks refine the box they are in; a point inside
  two boxes joins both. Objects of the same layout (box or not, number of points) are decoded
  together in one decoder call, so N plain boxes cost one call.
* **Points outside every box** (or all points, when there is no box): if any of them is a
  foreground point, they form one more object together (SAM's click-and-refine). Background
  points outside every box are otherwise unused.
* **One single point, no box**: SAM's answer is ambiguous (part / object / whole), so, as
  segment-anything advises, three masks are predicted and the one with the best predicted quality
  is kept. Every other object uses the single-mask output.
* **Only background points**: there is no object to describe, so it works as in FastSAM: every
  segment of the everything mode except those containing a background point.

Each object's score is SAM's predicted mask quality (IoU estimate); objects scoring below the
``confidence`` threshold are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .embedding_cache import EmbeddingCache, ImageEmbedding, embeddings, image_digest, model_token
from .loaded_model import LoadedModel
from .point_decoder import (
    decode_chunk_size,
    decode_point_tokens,
    masks_for,
    share_image,
    upsample_chunk_size,
)
from .precision import fp32_island
from .prompts import ImagePrompts
from .results import Masks
from .sam_transforms import encode_image, sam_resize


@dataclass(frozen=True)
class ObjectPrompt:
    """The prompt of one object: points ``((x, y), ...)`` with labels, and an optional xyxy box."""

    points: tuple = ()
    labels: tuple = ()
    box: tuple | None = None

    @property
    def multimask(self) -> bool:
        return self.box is None and len(self.points) == 1


def plan_objects(prompts: ImagePrompts) -> list[ObjectPrompt]:
    """Objects to decode for one image's prompts (see the module docstring); [] if none."""
    points, labels = prompts.points, prompts.labels
    if not prompts.boxes:
        return [ObjectPrompt(points, labels, None)] if prompts.has_positive else []
    objects, used = [], set()
    for x0, y0, x1, y1 in prompts.boxes:
        inside = [i for i, (x, y) in enumerate(points) if x0 <= x <= x1 and y0 <= y <= y1]
        used.update(inside)
        objects.append(ObjectPrompt(tuple(points[i] for i in inside), tuple(labels[i] for i in inside), (x0, y0, x1, y1)))
    rest = [i for i in range(len(points)) if i not in used]
    if any(labels[i] == 1 for i in rest):
        objects.append(ObjectPrompt(tuple(points[i] for i in rest), tuple(labels[i] for i in rest), None))
    return objects


def embed_image(model: LoadedModel, image: np.ndarray, cache: EmbeddingCache | None = None) -> ImageEmbedding:
    """The image's embedding, from the cache when this model already encoded these pixels."""
    cache = embeddings if cache is None else cache
    sam = model.runner
    device, dtype = model.device, model.dtype
    key = (model_token(model), int(sam.image_encoder.img_size), str(dtype), device.type, image_digest(image))
    return cache.get_or_compute(key, lambda: encode_image(sam, image), device)


def _upsampled(sam, low_res: torch.Tensor, input_size: tuple, original_size: tuple) -> torch.Tensor:
    """Low-res logits ``[K,h,w]`` → bool masks at ``original_size`` (``Sam.postprocess_masks``), in chunks."""
    h, w = original_size
    out = torch.empty((low_res.shape[0], h, w), dtype=torch.bool, device=low_res.device)
    step = upsample_chunk_size(sam, low_res.device, h, w)
    with fp32_island(low_res.device):  # logits near the threshold: fp32 (precision.py)
        for c in range(0, low_res.shape[0], step):
            logits = sam.postprocess_masks(low_res[c : c + step, None].float(), input_size, original_size)
            out[c : c + step] = logits[:, 0] > sam.mask_threshold
    return out


@torch.inference_mode()
def decode_objects(sam, embedding: ImageEmbedding, objects: list[ObjectPrompt]) -> Masks:
    """One mask per object; objects of one layout share a decoder call. Order = ``objects`` order.

    Runs in the caller's precision policy (``precision.for_model``, entered by the job).
    """
    features = embedding.features
    device = features.device
    h, w = embedding.original_size
    if not objects:
        return Masks.empty(h, w, device)
    transform = sam_resize(sam)  # ResizeLongestSide without 0-pixel sides (thin strips)
    groups: dict[tuple, list[int]] = {}
    for i, obj in enumerate(objects):
        groups.setdefault((obj.box is not None, len(obj.points), obj.multimask), []).append(i)

    masks = torch.empty((len(objects), h, w), dtype=torch.bool, device=device)
    scores = torch.empty((len(objects),), dtype=torch.float32, device=device)
    for (has_box, n_points, multimask), members in groups.items():
        point_arg = box_arg = None
        if n_points:
            coords = np.array([objects[i].points for i in members], dtype=np.float64).reshape(len(members), n_points, 2)
            coords = transform.apply_coords(coords, embedding.original_size)
            labels = np.array([objects[i].labels for i in members]).reshape(len(members), n_points)
            point_arg = (torch.as_tensor(coords, dtype=torch.float, device=device),
                         torch.as_tensor(labels, dtype=torch.int, device=device))
        if has_box:
            boxes = transform.apply_boxes(np.array([objects[i].box for i in members], dtype=np.float64), embedding.original_size)
            box_arg = torch.as_tensor(boxes, dtype=torch.float, device=device)
        step = decode_chunk_size(sam, features)  # many objects: decode them a few at a time
        sparse, _ = sam.prompt_encoder(points=point_arg, boxes=box_arg, masks=None)
        sparse = sparse.to(features.dtype)
        shared = share_image(sam, features) if len(members) > step else None
        for start in range(0, len(members), step):
            tokens = decode_point_tokens(sam, features, sparse[start : start + step], multimask, shared)
            quality = tokens.iou_pred.float()
            rows = torch.arange(quality.shape[0], device=device)
            best = quality.argmax(dim=1) if multimask else torch.zeros_like(rows)
            low_res = masks_for(sam, tokens, rows, best)  # only the chosen output of each object
            index = torch.as_tensor(members[start : start + step], device=device)
            masks[index] = _upsampled(sam, low_res, embedding.input_size, embedding.original_size)
            scores[index] = quality[rows, best]
    return Masks(masks, scores)


def _everything(model: LoadedModel, image: np.ndarray, sampling: str, proposals) -> Masks:
    from .automask import AutoMaskSettings, generate_segments

    segments = generate_segments(model.runner, image, AutoMaskSettings(), sampling=sampling, proposals=proposals)
    return Masks(segments.compact, segments.predicted_iou.float())


def segment_prompted(model: LoadedModel, image: np.ndarray, prompts: ImagePrompts, confidence: float,
                     cache: EmbeddingCache | None = None, sampling: str = "grid", proposals=None) -> Masks:
    """Objects for one RGB uint8 image's prompts (no prompt: SAM's everything mode with ``sampling``
    and, for object-aware, ``proposals``: see ``automask.generate_segments``)."""
    if prompts.empty or not (prompts.boxes or prompts.has_positive):
        found = _everything(model, image, sampling, proposals)
        if prompts.points:  # background points only: drop the segments under them (FastSAM's rule)
            under = found.masks.values_at([int(x) for x, _ in prompts.points], [int(y) for _, y in prompts.points])
            found = found.keep(~under.any(dim=1))
        return found
    objects = plan_objects(prompts)
    embedding = embed_image(model, image, cache)
    found = decode_objects(model.runner, embedding, objects)
    return found.keep(found.scores >= confidence)
