"""fal's current SAM endpoints: ``fal-ai/sam-3/image`` (and ``-rle``, and the ``sam-3-1`` twins)
and ``fal-ai/sam2/auto-segment``: their inputs, checked before anything is sent, and their outputs.

Source of every field: fal's public client types, ``fal-ai/fal-js`` ``libs/client/src/types/
endpoints.ts`` (snapshot 381105e, 2026-08-02, ``@fal-ai/client`` 1.10.1): ``Sam3ImageInput``,
``Sam3ImageOutput``, ``SAM3RLEOutput`` (``Sam3ImageRleInput = Sam3ImageInput``; the ``sam-3-1``
endpoints have the same types), ``PointPrompt``, ``BoxPrompt``, ``MaskMetadata``, ``Image``,
``Sam2AutoSegmentInput`` and ``Sam2AutoSegmentOutput``; the bounds fal publishes only on its
pages (``max_masks`` up to 32: fal.ai/models/fal-ai/sam-3/image). ``tests/vectors/
fal_sam3_shapes.json`` records the shapes used, with these sources.

* ``sam-3/image`` in: ``image_url``, ``prompt`` (text; fal's default is ``"wheel"``, so the pack
  always sends it, ``""`` for none), ``point_prompts`` ``[{x, y, label 0|1, object_id}]``,
  ``box_prompts`` ``[{x_min, y_min, x_max, y_max, object_id}]`` (pixels; the same object_id =
  the same object), ``apply_mask``, ``return_multiple_masks``, ``max_masks``, ``include_scores``,
  ``include_boxes``, ``output_format``, ``sync_mode``. Out: ``masks`` [Image], ``scores``,
  ``boxes`` (normalised ``[cx, cy, w, h]``), ``metadata`` [{index, score, box}]; the ``-rle``
  endpoints answer ``rle`` (a string, or one per mask) instead of ``masks``.
* ``sam2/auto-segment`` in: ``image_url``, ``points_per_side`` (32), ``pred_iou_thresh`` (0.88),
  ``stability_score_thresh`` (0.95), ``min_mask_region_area`` (100), ``output_format``,
  ``sync_mode``. Out: ``combined_mask`` Image, ``individual_masks`` [Image].

Errors use fal's 422 shape (``{"loc": ["body", ...], "msg", "type"}``), as :mod:`.schemas` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from .schemas import SAM2_AUTO_SEGMENT, ImageRef, check_image_url

SAM3_IMAGE = "fal-ai/sam-3/image"
SAM3_IMAGE_RLE = "fal-ai/sam-3/image-rle"
SAM31_IMAGE = "fal-ai/sam-3-1/image"
SAM31_IMAGE_RLE = "fal-ai/sam-3-1/image-rle"
SAM3_ENDPOINTS = (SAM3_IMAGE, SAM3_IMAGE_RLE, SAM31_IMAGE, SAM31_IMAGE_RLE)
RLE_ENDPOINTS = (SAM3_IMAGE_RLE, SAM31_IMAGE_RLE)

#: fal's page: "Up to 32 masks, configurable via max_masks"
MAX_MASKS = 32
#: sam2/auto-segment's published defaults
AUTO_SEGMENT_DEFAULTS = {"points_per_side": 32, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95,
                         "min_mask_region_area": 100}

SAM3_FIELDS = ("image_url", "prompt", "point_prompts", "box_prompts", "apply_mask", "return_multiple_masks",
               "max_masks", "include_scores", "include_boxes", "output_format", "sync_mode")
AUTO_SEGMENT_FIELDS = ("image_url", *AUTO_SEGMENT_DEFAULTS, "output_format", "sync_mode")
_POINT_FIELDS = ("x", "y", "label", "object_id", "frame_index")
_BOX_FIELDS = ("x_min", "y_min", "x_max", "y_max", "object_id", "frame_index")


def _err(loc: list, msg: str, type_: str) -> dict:
    return {"loc": ["body", *loc], "msg": msg, "type": type_}


def _number(v: Any) -> bool:
    """A finite JSON number (Python's JSON reader also accepts NaN / Infinity, which JSON has not)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_fields(body: Any, allowed: tuple) -> list[dict]:
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]
    errors = [] if "image_url" in body else [_err(["image_url"], "Field required", "missing")]
    if "image_url" in body:
        errors += check_image_url(body["image_url"], ["image_url"])
    return errors + [_err([k], "Extra inputs are not permitted", "extra_forbidden") for k in body if k not in allowed]


def _check_items(body: dict, name: str, fields: tuple, numbers: tuple) -> list[dict]:
    value = body.get(name, [])
    if not isinstance(value, list):
        return [_err([name], "Input should be a valid list", "list_type")]
    errors = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            errors.append(_err([name, i], "Input should be a valid dictionary", "dict_type"))
            continue
        errors += [_err([name, i, k], "Extra inputs are not permitted", "extra_forbidden") for k in item if k not in fields]
        errors += [_err([name, i, k], "Input should be a valid number", "float_type")
                   for k in numbers if k in item and not _number(item[k])]
        if "object_id" in item and not _integer(item["object_id"]):
            errors.append(_err([name, i, "object_id"], "Input should be a valid integer", "int_type"))
        if "label" in item and item["label"] not in (0, 1):
            errors.append(_err([name, i, "label"], "Input should be 0 (background) or 1 (foreground)", "literal_error"))
    return errors


def _check_flag(body: dict, name: str) -> list[dict]:
    return [_err([name], "Input should be a valid boolean", "bool_type")] if name in body and not isinstance(body[name], bool) else []


def _check_format(body: dict, allowed: tuple) -> list[dict]:
    if "output_format" in body and body["output_format"] not in allowed:
        return [_err(["output_format"], f"Input should be one of {', '.join(allowed)}", "literal_error")]
    return []


def validate_sam3(body: Any) -> list[dict]:
    """Errors in fal's 422 ``detail`` shape; empty when ``body`` is a valid ``Sam3ImageInput``."""
    errors = _check_fields(body, SAM3_FIELDS)
    if not isinstance(body, dict):
        return errors
    if "prompt" in body and not isinstance(body["prompt"], str):
        errors.append(_err(["prompt"], "Input should be a valid string", "string_type"))
    errors += _check_items(body, "point_prompts", _POINT_FIELDS, ("x", "y"))
    errors += _check_items(body, "box_prompts", _BOX_FIELDS, ("x_min", "y_min", "x_max", "y_max"))
    for name in ("apply_mask", "return_multiple_masks", "include_scores", "include_boxes", "sync_mode"):
        errors += _check_flag(body, name)
    if "max_masks" in body and not (_integer(body["max_masks"]) and 1 <= body["max_masks"] <= MAX_MASKS):
        errors.append(_err(["max_masks"], f"Input should be an integer from 1 to {MAX_MASKS}", "value_error"))
    return errors + _check_format(body, ("jpeg", "png", "webp"))


def validate_auto_segment(body: Any) -> list[dict]:
    """Errors in fal's 422 ``detail`` shape; empty when ``body`` is a valid ``Sam2AutoSegmentInput``."""
    errors = _check_fields(body, AUTO_SEGMENT_FIELDS)
    if not isinstance(body, dict):
        return errors
    for name in ("points_per_side", "min_mask_region_area"):
        low = 1 if name == "points_per_side" else 0
        if name in body and not (_integer(body[name]) and body[name] >= low):
            errors.append(_err([name], f"Input should be an integer of at least {low}", "int_type"))
    for name in ("pred_iou_thresh", "stability_score_thresh"):
        if name in body and not (_number(body[name]) and 0 <= body[name] <= 1):
            errors.append(_err([name], "Input should be a number from 0 to 1", "float_type"))
    return errors + _check_flag(body, "sync_mode") + _check_format(body, ("jpeg", "png"))


def validator_for(endpoint_id: str):
    """The request check for ``endpoint_id``: a function body → list of fal-shaped 422 details."""
    return validate_auto_segment if endpoint_id == SAM2_AUTO_SEGMENT else validate_sam3


# ------------------------------------------------------------------ building inputs


def _plain(v: float):
    return int(v) if float(v).is_integer() else round(float(v), 3)


def sam3_arguments(image_url: str, prompt: str, objects, max_masks: int) -> dict:
    """A ``Sam3ImageInput`` from the pack's object plan (``sam_prompted.plan_objects``: one object
    per box, points inside a box refine it, the other points one more object): object k's box and
    points carry ``object_id`` k. Masks come back as plain masks (``apply_mask`` off) inline
    (``sync_mode``: data URIs, kept out of the request history), with scores and boxes."""
    points, boxes = [], []
    for k, obj in enumerate(objects):
        points += [{"x": _plain(x), "y": _plain(y), "label": int(label), "object_id": k}
                   for (x, y), label in zip(obj.points, obj.labels)]
        if obj.box is not None:
            x0, y0, x1, y1 = obj.box
            boxes.append({"x_min": _plain(x0), "y_min": _plain(y0), "x_max": _plain(x1), "y_max": _plain(y1),
                          "object_id": k})
    return {"image_url": image_url, "prompt": prompt, "point_prompts": points, "box_prompts": boxes,
            "apply_mask": False, "return_multiple_masks": True, "max_masks": int(max_masks),
            "include_scores": True, "include_boxes": True, "output_format": "png", "sync_mode": True}


def auto_segment_arguments(image_url: str, points_per_side: int, pred_iou_thresh: float,
                           stability_score_thresh: float, min_mask_region_area: int) -> dict:
    """``fal-ai/sam2/auto-segment``'s request body (fal-js ``endpoints.ts``) from the node's values."""
    return {"image_url": image_url, "points_per_side": int(points_per_side), "pred_iou_thresh": float(pred_iou_thresh),
            "stability_score_thresh": float(stability_score_thresh),
            "min_mask_region_area": int(min_mask_region_area), "output_format": "png", "sync_mode": True}


# ------------------------------------------------------------------ outputs


@dataclass
class SegmentsAnswer:
    """One answer, read: mask images or RLE strings, and per-mask scores / normalised boxes."""

    images: list  # [ImageRef]
    rles: list  # [str | dict]
    scores: list  # [float | None], one per mask
    boxes: list  # [[cx, cy, w, h] | None], one per mask (normalised)

    @property
    def count(self) -> int:
        return len(self.images) + len(self.rles)


def _image_ref(value: Any, where: str) -> ImageRef:
    if not isinstance(value, dict) or not isinstance(value.get("url"), str) or not value["url"]:
        raise ValueError(f"{where} is not an Image ({{'url': ...}})")
    return ImageRef(value["url"], value.get("content_type") if isinstance(value.get("content_type"), str) else None)


def _per_mask(body: dict, count: int) -> tuple[list, list]:
    scores, boxes = [None] * count, [None] * count
    for i, entry in enumerate(body.get("metadata") or []):
        index = entry.get("index", i) if isinstance(entry, dict) else None
        if _integer(index) and 0 <= index < count:
            scores[index] = entry.get("score") if _number(entry.get("score")) else None
            box = entry.get("box")
            boxes[index] = box if isinstance(box, list) and len(box) == 4 and all(map(_number, box)) else None
    given_scores, given_boxes = body.get("scores"), body.get("boxes")
    if isinstance(given_scores, list) and len(given_scores) == count:
        scores = [s if _number(s) else None for s in given_scores]
    if isinstance(given_boxes, list) and len(given_boxes) == count:
        boxes = [b if isinstance(b, list) and len(b) == 4 and all(map(_number, b)) else None for b in given_boxes]
    return scores, boxes


def parse_sam3_output(body: Any, rle: bool) -> SegmentsAnswer:
    """``Sam3ImageOutput`` (``masks``) or ``SAM3RLEOutput`` (``rle``) → :class:`SegmentsAnswer`.
    Raises ValueError when the answer has neither shape."""
    if not isinstance(body, dict):
        raise ValueError(f"the result is a {type(body).__name__}, not an object")
    if rle:
        value = body.get("rle")
        rles = [value] if isinstance(value, (str, dict)) else value
        if not isinstance(rles, list) or not all(isinstance(r, (str, dict)) for r in rles):
            raise ValueError(f"the result has no 'rle' string or list of strings (keys {sorted(body)})")
        images = []
    else:
        masks = body.get("masks")
        if not isinstance(masks, list):
            raise ValueError(f"the result has no 'masks' list (keys {sorted(body)})")
        images, rles = [_image_ref(m, f"masks[{i}]") for i, m in enumerate(masks)], []
    scores, boxes = _per_mask(body, len(images) + len(rles))
    return SegmentsAnswer(images, rles, scores, boxes)


def parse_auto_segment_output(body: Any) -> SegmentsAnswer:
    """``Sam2AutoSegmentOutput`` → its ``individual_masks`` (``combined_mask`` is their union)."""
    masks = body.get("individual_masks") if isinstance(body, dict) else None
    if not isinstance(masks, list):
        keys = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise ValueError(f"the result has no 'individual_masks' list (keys {keys})")
    images = [_image_ref(m, f"individual_masks[{i}]") for i, m in enumerate(masks)]
    return SegmentsAnswer(images, [], [None] * len(images), [None] * len(images))


def describe_errors(errors: list[dict], limit: int = 4) -> str:
    """``loc: msg`` lines of a 422 detail list (for the node's error before sending)."""
    parts = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors[:limit]]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more


def optional_score(v: Optional[float]) -> Optional[float]:
    """A score as the node reports it: rounded to 4 places, None kept (fal sent none)."""
    return None if v is None else round(float(v), 4)
