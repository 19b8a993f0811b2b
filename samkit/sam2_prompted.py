"""Point and box prompts for SAM 2 / SAM 2.1: ``SAM2ImagePredictor.predict``'s maths, objects batched.

Objects are planned exactly as for SAM (``sam_prompted.plan_objects``: one object per box, points
inside a box refine it, foreground points outside every box make one more object, a single click
keeps the best of SAM's three masks). Each object is what ``sam2.SAM2ImagePredictor.predict``
gives for its prompt on the same checkpoint (``sam2/sam2_image_predictor.py``, ``_prep_prompts``
and ``_predict``):

* coordinates in image pixels become the encoder's 1024×1024 frame: x·1024/W, y·1024/H (SAM 2
  resizes the image to a square, without keeping its aspect ratio);
* a box becomes two points labelled 2 and 3, placed *before* the object's points, and the prompt
  encoder gets no box argument (a box alone gets no padding point; points alone get one);
* the decoder runs with the image's high-resolution features; a single-mask object uses SAM 2's
  dynamic fallback to the most stable multimask output (``dynamic_multimask_via_stability``);
* low-resolution logits are resized to the image bilinearly and thresholded at 0.

The image embedding (with its high-resolution features) is cached (``embedding_cache``), so a
prompt edit on the same image runs the decoder only. Objects of the same layout share a decoder
call, a few at a time (each one carries its own 256×256 upscaled features).
"""

from __future__ import annotations

import numpy as np
import torch

from .embedding_cache import EmbeddingCache, embeddings, image_digest, model_token
from .loaded_model import LoadedModel
from .point_decoder import prompts_per_chunk
from .precision import fp32_island
from .prompts import ImagePrompts
from .results import Masks
from .sam2_model import Sam2Embedding, Sam2Image, decode_low_res, to_encoder_frame
from .sam_prompted import ObjectPrompt, plan_objects


def embed_image(model: LoadedModel, image: np.ndarray, cache: EmbeddingCache | None = None) -> Sam2Embedding:
    """The image's SAM 2 embedding, from the cache when this model already encoded these pixels."""
    cache = embeddings if cache is None else cache
    net: Sam2Image = model.runner
    key = (model_token(model), "sam2", net.image_size, str(model.dtype), model.device.type, image_digest(image))
    return cache.get_or_compute(key, lambda: net.encode_image(image), model.device)


def _group_prompt(objects: list[ObjectPrompt], members: list[int], n_points: int, has_box: bool,
                  original_size: tuple, resolution: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt encoder's (coords ``[B,N,2]``, labels ``[B,N]``) for objects of one layout: box corners first."""
    coords, labels = [], []
    if has_box:
        boxes = torch.as_tensor([objects[i].box for i in members], dtype=torch.float, device=device)
        coords.append(to_encoder_frame(boxes.reshape(-1, 2, 2), original_size, resolution))
        labels.append(torch.tensor([[2, 3]], dtype=torch.int, device=device).repeat(len(members), 1))
    if n_points:
        points = torch.as_tensor([objects[i].points for i in members], dtype=torch.float, device=device)
        coords.append(to_encoder_frame(points.reshape(len(members), n_points, 2), original_size, resolution))
        labels.append(torch.as_tensor([objects[i].labels for i in members], dtype=torch.int, device=device)
                      .reshape(len(members), n_points))
    return torch.cat(coords, dim=1), torch.cat(labels, dim=1)


@torch.inference_mode()
def decode_objects(net: Sam2Image, embedding: Sam2Embedding, objects: list[ObjectPrompt]) -> Masks:
    """One bool mask ``[H,W]`` and predicted IoU per object, in ``objects`` order.

    Runs in the caller's precision policy (``precision.for_model``); masks are made in fp32.
    """
    features = embedding.features
    device = features.device
    h, w = embedding.original_size
    if not objects:
        return Masks.empty(h, w, device)
    groups: dict[tuple, list[int]] = {}
    for i, obj in enumerate(objects):
        groups.setdefault((obj.box is not None, len(obj.points), obj.multimask), []).append(i)
    masks = torch.empty((len(objects), h, w), dtype=torch.bool, device=device)
    scores = torch.empty((len(objects),), dtype=torch.float32, device=device)
    # per object: the decoder's upscaled features (32 channels at 256²) and its full-size logits
    step = prompts_per_chunk(device, 4 * max(32 * 256 * 256, h * w))
    for (has_box, n_points, multimask), members in groups.items():
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            coords, labels = _group_prompt(objects, chunk, n_points, has_box, (h, w), net.image_size, device)
            low_res, iou = decode_low_res(net, embedding, coords, labels, multimask)
            quality = iou.float()
            rows = torch.arange(len(chunk), device=device)
            best = quality.argmax(dim=1) if multimask else torch.zeros_like(rows)
            index = torch.as_tensor(chunk, device=device)
            with fp32_island(device):  # logits near the threshold: fp32 (precision.py)
                masks[index] = net.upsample_logits(low_res[rows, best], (h, w)) > net.mask_threshold
            scores[index] = quality[rows, best]
    return Masks(masks, scores)


def _everything(model: LoadedModel, image: np.ndarray, sampling: str, proposals) -> Masks:
    from .automask import generate_segments
    from .sam2_backend import SAM2_DEFAULTS, Sam2Backend

    segments = generate_segments(Sam2Backend(model.runner), image, SAM2_DEFAULTS, sampling=sampling, proposals=proposals)
    return Masks(segments.compact, segments.predicted_iou.float())


def segment_prompted(model: LoadedModel, image: np.ndarray, prompts: ImagePrompts, confidence: float,
                     cache: EmbeddingCache | None = None, sampling: str = "grid", proposals=None) -> Masks:
    """Objects for one RGB uint8 image's prompts (no prompt: SAM 2's everything mode with
    ``SAM2AutomaticMaskGenerator``'s defaults and ``sampling`` / ``proposals`` as in
    ``automask.generate_segments``; background points only: its segments not under them)."""
    if prompts.empty or not (prompts.boxes or prompts.has_positive):
        found = _everything(model, image, sampling, proposals)
        if prompts.points:
            under = found.masks.values_at([int(x) for x, _ in prompts.points], [int(y) for _, y in prompts.points])
            found = found.keep(~under.any(dim=1))
        return found
    embedding = embed_image(model, image, cache)
    found = decode_objects(model.runner, embedding, plan_objects(prompts))
    return found.keep(found.scores >= confidence)
