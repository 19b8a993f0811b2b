"""The ``SAM 3 (fal)`` node's jobs: fal's ``sam-3/image`` family (text, points, boxes) and
``sam2/auto-segment`` (everything), decoded into MASK ``[N,H,W]`` at the input's size, a
per-image union, and scored boxes.

Each image of a batch is one request, run by :func:`.remote.run_batch` (the same queue client,
progress, Cancel, timeout and key handling as the other remote nodes). Inputs are built from the
pack's prompt formats (:func:`..prompts.parse_prompts`, the local node's parser) and grouped into
objects exactly as the local Tiny SAM node groups them (:func:`..sam_prompted.plan_objects`: one
object per box, points inside a box refine it, the other points one more object); each object is
one ``object_id``. Every request is checked against fal's published schema
(:mod:`.sam3_schemas`) before the first one is sent, so a 422 never costs a billed request.

Outputs follow the pack's batch rule: image after image, each image's masks in the order fal
answered them (``sam2/auto-segment``: largest first, like the local seg map), and an image with
none contributes one empty mask. Boxes are ``{x, y, width, height, score}`` in input pixels,
one list per image: fal's normalised ``[cx, cy, w, h]`` scaled to the input, or, where fal sent
no box, the mask's own extent; ``score`` is left out where fal sent none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image

from .. import runtime
from ..images import as_image_batch
from ..prompts import parse_prompts
from ..sam_prompted import plan_objects
from ..tiny_sam_params import NO_BOX, NO_LABEL, NO_POINT
from . import sam3_schemas as S
from .keys import Target, resolve_target
from .remote import DEFAULT_TIMEOUT_S, _check_timeout, answer_error, data_uri_for, decode_result, encode_input_png, run_batch
from .rle import RLEError, decode_rle
from .schemas import SAM2_AUTO_SEGMENT

#: the node's choice of job → fal endpoint id
JOBS = {
    "sam-3 (masks)": S.SAM3_IMAGE,
    "sam-3 (rle)": S.SAM3_IMAGE_RLE,
    "sam-3-1 (masks)": S.SAM31_IMAGE,
    "sam-3-1 (rle)": S.SAM31_IMAGE_RLE,
    "everything (sam2/auto-segment)": SAM2_AUTO_SEGMENT,
}


@dataclass
class Sam3RemoteResult:
    object_masks: torch.Tensor  # [N,H,W] float 0/1, N = sum(max(n_i, 1))
    mask: torch.Tensor  # [B,H,W] union per image
    boxes: list  # per image: [{x, y, width, height[, score]}]
    counts: list  # n_i per image
    request_ids: list


def _mask_of_image(data: bytes, request_id: str) -> np.ndarray:
    """A mask image (black/white, grey or transparent) → bool at its own size."""
    image = decode_result(data, request_id)
    if image.alpha is not None and (image.alpha < 255).any():
        return image.alpha > 127
    return image.pixels.astype(np.uint16).sum(-1) >= 3 * 128


def _at_size(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    if mask.shape == (h, w):
        return mask
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(resized) > 127


def _box(mask: np.ndarray, normalised: Optional[list], score: Optional[float]) -> Optional[dict]:
    h, w = mask.shape
    if normalised is not None:
        cx, cy, bw, bh = normalised
        x0, y0 = min(max(int(round((cx - bw / 2) * w)), 0), w - 1), min(max(int(round((cy - bh / 2) * h)), 0), h - 1)
        x1, y1 = min(int(round((cx + bw / 2) * w)), w), min(int(round((cy + bh / 2) * h)), h)  # kept inside the image
        box = {"x": x0, "y": y0, "width": max(x1 - x0, 1), "height": max(y1 - y0, 1)}
    else:
        ys, xs = np.nonzero(mask)
        if not len(xs):
            return None
        box = {"x": int(xs.min()), "y": int(ys.min()), "width": int(xs.max() - xs.min() + 1),
               "height": int(ys.max() - ys.min() + 1)}
    if score is not None:
        box["score"] = S.optional_score(score)
    return box


def _collector(endpoint_id: str, target: Target, h: int, w: int):
    rle = endpoint_id in S.RLE_ENDPOINTS

    def collect(output, request_id, downloader):
        try:
            answer = (S.parse_auto_segment_output(output) if endpoint_id == SAM2_AUTO_SEGMENT
                      else S.parse_sam3_output(output, rle))
        except ValueError as exc:
            raise answer_error(endpoint_id, request_id, exc, output, target) from None
        masks = [_mask_of_image(downloader.fetch(ref.url, request_id), request_id) for ref in answer.images]
        try:
            masks += [decode_rle(value, h, w) for value in answer.rles]
        except RLEError as exc:
            raise answer_error(endpoint_id, request_id, exc, None, target) from None
        masks = [_at_size(m, h, w) for m in masks]
        found = [(m, _box(m, b, s)) for m, b, s in zip(masks, answer.boxes, answer.scores)]
        if endpoint_id == SAM2_AUTO_SEGMENT:
            found.sort(key=lambda item: -int(item[0].sum()))  # largest first, like the local seg map
        return request_id, found

    return collect


def _assemble(results: list, h: int, w: int) -> Sam3RemoteResult:
    out = runtime.output_device()
    per_object, unions, boxes, counts = [], [], [], []
    for _rid, found in results:
        counts.append(len(found))
        masks = [m for m, _ in found] or [np.zeros((h, w), bool)]
        per_object += masks
        unions.append(np.logical_or.reduce(masks))
        boxes.append([b for _, b in found if b is not None])

    def stack(arrays):
        return torch.from_numpy(np.stack(arrays)).to(device=out, dtype=torch.float32)

    return Sam3RemoteResult(stack(per_object), stack(unions), boxes, counts, [rid for rid, _ in results])


def _check(endpoint_id: str, arguments: list[dict]) -> None:
    validate = S.validator_for(endpoint_id)
    for i, body in enumerate(arguments):
        errors = validate(body)
        if errors:
            which = f" (image {i + 1})" if len(arguments) > 1 else ""
            raise ValueError(f"{endpoint_id}{which}: the request breaks fal's published schema, so nothing was sent: "
                             f"{S.describe_errors(errors)}")


def segment(image: torch.Tensor, *, job: str = "sam-3 (masks)", prompt: str = "", point_prompt=NO_POINT.text,
            point_label=NO_LABEL.text, box_prompt=NO_BOX.text, bboxes=None, positive_coords=None,
            negative_coords=None, max_masks: int = 3, points_per_side: int = 32, pred_iou_thresh: float = 0.88,
            stability_score_thresh: float = 0.95, min_mask_region_area: int = 100, endpoint: str = "fal",
            timeout: float = DEFAULT_TIMEOUT_S, target: Optional[Target] = None) -> Sam3RemoteResult:
    """Run ``job`` (a key of :data:`JOBS`) on each image of the batch; see the module docstring.

    Prompts (pixels of the input: ``point_prompt`` ``[[x, y], ...]`` with ``point_label``,
    ``box_prompt`` ``[[x, y, w, h], ...]``, core ``bboxes``, KJNodes coords) are read and checked
    by the local node's parser. Raises ``ValueError`` (bad prompt or setting, or no prompt at all
    for a sam-3 job) before anything is sent, and the remote errors of :mod:`.errors`.
    """
    if job not in JOBS:
        raise ValueError(f"job must be one of {', '.join(JOBS)}, got {job!r}")
    endpoint_id = JOBS[job]
    batch = as_image_batch(image)
    b, h, w, _ = batch.shape
    timeout = _check_timeout(timeout)
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be text, got {type(prompt).__name__}")
    prompt = prompt.strip()
    if endpoint_id == SAM2_AUTO_SEGMENT:
        def build(i: int, uri: str) -> dict:
            return S.auto_segment_arguments(uri, points_per_side, pred_iou_thresh, stability_score_thresh,
                                            min_mask_region_area)
    else:
        prompts = parse_prompts(b, w, h, point_prompt, point_label, box_prompt, bboxes, positive_coords, negative_coords)
        objects = [plan_objects(p) for p in prompts]
        for i, (p, planned) in enumerate(zip(prompts, objects)):
            if not prompt and not planned:
                which = f"image {i + 1}: " if b > 1 else ""
                raise ValueError(f"{which}SAM 3 needs a text prompt, a foreground point or a box (background points "
                                 "alone describe no object); for every segment choose job 'everything "
                                 "(sam2/auto-segment)'")

        def build(i: int, uri: str) -> dict:
            return S.sam3_arguments(uri, prompt, objects[i], max_masks)

    arguments = [build(i, data_uri_for(encode_input_png(batch[i])[0], i)) for i in range(b)]
    _check(endpoint_id, arguments)
    target = target or resolve_target(endpoint)
    results = run_batch(endpoint_id, arguments, target=target, timeout=timeout, label="SAM 3 (fal)",
                        collect=_collector(endpoint_id, target, h, w))
    return _assemble(results, h, w)
