"""Parsing and checking point and box prompts (pure functions, no torch).

Accepted forms, all in pixel coordinates of the input image:

* fal / FastSAM widgets: ``point_prompt`` ``[[x,y],...]``, ``point_label`` ``[1,0,...]``,
  ``box_prompt`` ``[[x,y,w,h],...]``, as JSON text or Python lists. One more level of nesting
  gives one list per image of a batch (``[[[x,y]], [[x,y],[x,y]]]``).
* fal's defaults ``[[0,0]]`` / ``[0]`` / ``[[0,0,0,0]]`` mean "no prompt" (so a click exactly at
  the corner pixel (0,0) cannot be expressed; click one pixel in).
* KJNodes PointsEditor strings ``[{"x":..,"y":..}, ...]`` for positive and negative points.
* ComfyUI core ``BOUNDING_BOX``: ``{"x","y","width","height"}``, a list of them, or one list
  per image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class PromptError(ValueError):
    """A prompt input is malformed; the message names the input and says how to fix it."""


@dataclass
class ImagePrompts:
    """Prompts for one image: points ``[(x, y)]`` with labels (1/0), boxes ``[(x, y, w, h)]``."""

    points: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    boxes: list = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.points and not self.boxes


def _load(value: Any, name: str) -> Any:
    if value is None:
        return []
    if isinstance(value, (list, tuple, dict)):
        return value
    text = str(value).strip()
    if not text:
        return []
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:  # KJNodes and hand-written prompts often use single quotes
            return json.loads(text.replace("'", '"'))
        except json.JSONDecodeError as exc:
            raise PromptError(f"{name} is not valid JSON ({exc.msg} at character {exc.pos}): {text[:80]!r}") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _depth(value: Any) -> int:
    d = 0
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
        d += 1
    return d


def _per_image(value: Any, leaf_depth: int, batch: int, name: str) -> list:
    """Normalise to one list per image: depth ``leaf_depth`` is a single list shared by all."""
    if value in ([], ()):
        return [[] for _ in range(batch)]
    depth = _depth(value)
    if depth == leaf_depth:
        return [list(value) for _ in range(batch)]
    if depth == leaf_depth + 1:
        if len(value) != batch:
            raise PromptError(f"{name} has {len(value)} per-image lists but the batch has {batch} images")
        return [list(v) for v in value]
    raise PromptError(f"{name} is nested {depth} levels deep; expected {leaf_depth} (one list) or {leaf_depth + 1} (one list per image)")


def _check_point(p: Any, name: str, w: int, h: int) -> tuple:
    if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_number(v) for v in p)):
        raise PromptError(f"{name}: each point must be [x, y] in pixels, got {p!r}")
    x, y = float(p[0]), float(p[1])
    if not (0 <= x < w and 0 <= y < h):
        raise PromptError(f"{name}: point [{p[0]}, {p[1]}] is outside the {w}x{h} image (x 0..{w - 1}, y 0..{h - 1})")
    return x, y


def _check_box(b: Any, name: str, w: int, h: int) -> tuple:
    if not (isinstance(b, (list, tuple)) and len(b) == 4 and all(_is_number(v) for v in b)):
        raise PromptError(f"{name}: each box must be [x, y, width, height] in pixels, got {b!r}")
    x, y, bw, bh = (float(v) for v in b)
    if bw <= 0 or bh <= 0:
        raise PromptError(f"{name}: box {list(b)} has no area; width and height must be positive")
    if x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
        raise PromptError(f"{name}: box {list(b)} lies outside the {w}x{h} image")
    return x, y, bw, bh


def _bounding_boxes(value: Any, batch: int) -> list:
    """Core BOUNDING_BOX (dict / list of dicts / per-image lists) → per-image [x,y,w,h] lists."""
    if value is None:
        return [[] for _ in range(batch)]
    if isinstance(value, dict):
        value = [value]

    def as_xywh(d: Any) -> list:
        if not isinstance(d, dict) or not all(k in d for k in ("x", "y", "width", "height")):
            raise PromptError(f"bboxes: expected {{x, y, width, height}} boxes, got {d!r}")
        return [d["x"], d["y"], d["width"], d["height"]]

    if value and all(isinstance(v, dict) for v in value):
        shared = [as_xywh(d) for d in value]
        return [list(shared) for _ in range(batch)]
    if len(value) != batch:
        raise PromptError(f"bboxes has {len(value)} per-image lists but the batch has {batch} images")
    return [[as_xywh(d) for d in ([v] if isinstance(v, dict) else v)] for v in value]


def parse_prompts(
    batch: int,
    width: int,
    height: int,
    point_prompt: Any = "[[0,0]]",
    point_label: Any = "[0]",
    box_prompt: Any = "[[0,0,0,0]]",
    bboxes: Any = None,
    positive_coords: Any = None,
    negative_coords: Any = None,
) -> list[ImagePrompts]:
    """All prompt inputs → one :class:`ImagePrompts` per image, checked against the image size."""
    points = _per_image(_load(point_prompt, "point_prompt"), 2, batch, "point_prompt")
    labels = _per_image(_load(point_label, "point_label"), 1, batch, "point_label")
    boxes = _per_image(_load(box_prompt, "box_prompt"), 2, batch, "box_prompt")
    extra_boxes = _bounding_boxes(bboxes, batch)
    pos = _per_image(_coords(positive_coords, "positive_coords"), 2, batch, "positive_coords")
    neg = _per_image(_coords(negative_coords, "negative_coords"), 2, batch, "negative_coords")

    out = []
    for i in range(batch):
        prompts = ImagePrompts()
        pts, lbs = points[i], labels[i]
        if len(pts) != len(lbs):
            raise PromptError(
                f"point_label has {len(lbs)} labels but point_prompt has {len(pts)} points"
                + (f" (image {i + 1})" if batch > 1 else "") + "; give one label (1 or 0) per point"
            )
        for p, lab in zip(pts, lbs):
            if isinstance(p, (list, tuple)) and len(p) == 2 and p[0] == 0 and p[1] == 0:
                continue  # fal's "no point" sentinel
            if lab not in (0, 1) or isinstance(lab, bool):
                raise PromptError(f"point_label values must be 1 (foreground) or 0 (background), got {lab!r}")
            prompts.points.append(_check_point(p, "point_prompt", width, height))
            prompts.labels.append(int(lab))
        for p in pos[i]:
            prompts.points.append(_check_point(p, "positive_coords", width, height))
            prompts.labels.append(1)
        for p in neg[i]:
            prompts.points.append(_check_point(p, "negative_coords", width, height))
            prompts.labels.append(0)
        for b in boxes[i]:
            if isinstance(b, (list, tuple)) and len(b) == 4 and all(v == 0 for v in b):
                continue  # fal's "no box" sentinel
            prompts.boxes.append(_check_box(b, "box_prompt", width, height))
        for b in extra_boxes[i]:
            prompts.boxes.append(_check_box(b, "bboxes", width, height))
        out.append(prompts)
    return out


def _coords(value: Any, name: str) -> list:
    """KJNodes points ``[{"x":..,"y":..}]`` → ``[[x, y]]`` (also accepts ``[[x, y]]``)."""
    data = _load(value, name)
    if isinstance(data, dict):
        data = [data]

    def convert(item: Any) -> Any:
        if isinstance(item, dict):
            if "x" not in item or "y" not in item:
                raise PromptError(f"{name}: each point must have x and y, got {item!r}")
            return [item["x"], item["y"]]
        if isinstance(item, list) and item and isinstance(item[0], (dict, list)):
            return [convert(v) for v in item]
        return item

    return [convert(v) for v in data]


def xywh_to_xyxy(box: tuple) -> tuple:
    x, y, w, h = box
    return x, y, x + w, y + h
