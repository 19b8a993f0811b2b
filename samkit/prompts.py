"""Point and box prompts: parsing and checking (pure Python, no torch).

Every coordinate is in pixels of the input image (x to the right, y down, origin top-left).
Accepted inputs, all optional, all combinable:

``point_prompt`` / ``point_label`` / ``box_prompt`` (fal ``tiny-sam`` / FastSAM widgets)
    ``[[x, y], ...]``, ``[1, 0, ...]`` (1 = foreground, 0 = background, one per point) and
    ``[[x, y, w, h], ...]``, as JSON text (single quotes allowed) or Python lists. fal's defaults
    (``tiny_sam_params``: ``[[0,0]]`` / ``[0]`` / ``[[0,0,0,0]]``) mean "no prompt": a point equal to
    the default's (exactly ``[0, 0]``) and a box equal to its box are skipped (with their labels), as
    in FastSAM, so a click on the very corner pixel must be written ``[1, 0]`` or ``[0, 1]``.
``positive_coords`` / ``negative_coords`` (KJNodes PointsEditor, core SAM3)
    ``[{"x": .., "y": ..}, ...]`` JSON; ``[[x, y], ...]`` also works. ``""`` / ``"[]"`` = none.
``bboxes`` (ComfyUI core ``BOUNDING_BOX``)
    ``{"x", "y", "width", "height"}`` (other keys such as ``score`` are ignored), a list of them,
    or one list per image (what core SAM3 and this pack's Tiny SAM node output).
``xyxy_boxes`` (KJNodes / kijai ``BBOX``)
    ``[[x0, y0, x1, y1], ...]`` corner boxes, or one list per image.

Batches: a plain list applies to every image of the batch; **one more level of nesting** gives one
list per image, in batch order, and must have exactly one entry per image::

    point_prompt = [[[10, 20]], [[30, 40], [50, 60]]]   # image 1: one point, image 2: two
    point_label  = [[1], [1, 0]]                        # (a plain [1] would apply to each image)
    bboxes       = [[{"x": 0, "y": 0, "width": 8, "height": 8}], []]   # image 2: no box

Checks (each failure is a :class:`PromptError` naming the input): malformed JSON or structure,
non-finite numbers, a point outside the image, a label other than 0/1, a label count different
from the point count, a box without area or entirely outside the image. Boxes that stick out of
the image are clipped to it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .tiny_sam_params import NO_BOX, NO_LABEL, NO_POINT


class PromptError(ValueError):
    """A prompt input is malformed; the message names the input and says how to fix it."""


@dataclass(frozen=True)
class ImagePrompts:
    """Checked prompts for one image.

    ``points``: ``((x, y), ...)`` floats; ``labels``: ``(1 | 0, ...)``, one per point;
    ``boxes``: ``((x0, y0, x1, y1), ...)`` floats, clipped to the image, in input order
    (``box_prompt``, then ``bboxes``, then ``xyxy_boxes``).
    """

    points: tuple = ()
    labels: tuple = ()
    boxes: tuple = ()

    @property
    def empty(self) -> bool:
        return not self.points and not self.boxes

    @property
    def has_positive(self) -> bool:
        return any(label == 1 for label in self.labels)


# ---------------------------------------------------------------- reading values


def load_json(value: Any, name: str) -> Any:
    """A widget string or an already-parsed value → Python data (``None``/blank → ``[]``)."""
    if value is None:
        return []
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except RecursionError:  # the parser's own recursion limit, from a few thousand brackets
        raise PromptError(f"{name} is nested too deeply to be a prompt: {_clip(text)}. {_EXPECTED.get(name, '')}") from None
    except json.JSONDecodeError:
        try:  # hand-written and KJNodes strings often use single quotes
            data = json.loads(text.replace("'", '"'))
        except json.JSONDecodeError as exc:
            raise PromptError(
                f"{name} is not valid JSON ({exc.msg} at character {exc.pos}): {_clip(text)}. "
                f"{_EXPECTED.get(name, '')}"
            ) from None
    if isinstance(data, str):  # KJNodes writes json.dumps("") when it has no negative points
        return load_json(data, name) if data.strip() else []
    return data


def _clip(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


_EXPECTED = {
    "point_prompt": "Write points as [[x, y], ...] in pixels, e.g. [[120, 80]].",
    "point_label": "Write one label per point as [1, 0, ...] (1 = foreground, 0 = background).",
    "box_prompt": "Write boxes as [[x, y, width, height], ...] in pixels, e.g. [[10, 20, 100, 80]].",
    "positive_coords": 'Write points as [{"x": 120, "y": 80}, ...] (the KJNodes PointsEditor format).',
    "negative_coords": 'Write points as [{"x": 120, "y": 80}, ...] (the KJNodes PointsEditor format).',
    "bboxes": "Connect a BOUNDING_BOX: {x, y, width, height}, a list of them, or one list per image.",
    "xyxy_boxes": "Write boxes as [[x0, y0, x1, y1], ...] corner coordinates in pixels.",
}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(values: Sequence, name: str, item: Any) -> tuple:
    out = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in out):
        raise PromptError(f"{name}: {item!r} contains a value that is not a finite number")
    return out


def _is_pair(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v)


def _is_quad(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 4 and all(_is_number(x) for x in v)


def _is_xy_dict(v: Any) -> bool:
    return isinstance(v, dict) and "x" in v and "y" in v and "width" not in v


def _is_box_dict(v: Any) -> bool:
    return isinstance(v, dict) and all(k in v for k in ("x", "y", "width", "height"))


def _per_image(data: Any, is_item: Callable[[Any], bool], batch: int, name: str) -> list[list]:
    """``data`` as one list of items per image.

    A single item or a flat list of items is shared by every image; a list of lists of items
    is one list per image and needs exactly ``batch`` entries.
    """
    if is_item(data):
        data = [data]
    if not isinstance(data, (list, tuple)):
        raise PromptError(f"{name} must be a list, got {type(data).__name__} {_clip(repr(data))}. {_EXPECTED.get(name, '')}")
    if not data:
        return [[] for _ in range(batch)]
    if all(is_item(v) for v in data):
        return [list(data) for _ in range(batch)]
    if all(isinstance(v, (list, tuple)) and all(is_item(x) for x in v) for v in data):
        if len(data) != batch:
            raise PromptError(
                f"{name} has {len(data)} per-image lists but the batch has {batch} image"
                f"{'s' if batch != 1 else ''}; give one list per image, or a single flat list for all images"
            )
        return [list(v) for v in data]
    bad = next((v for v in data if not is_item(v)), data[0])
    raise PromptError(f"{name}: {_clip(repr(bad))} is not a valid entry. {_EXPECTED.get(name, '')}")


# ---------------------------------------------------------------- checks


def _check_point(p: Sequence, name: str, width: int, height: int, image: str) -> tuple:
    x, y = _finite(p, name, list(p))
    if not (0 <= x < width and 0 <= y < height):
        raise PromptError(
            f"{name}: point [{_fmt(x)}, {_fmt(y)}]{image} is outside the {width}x{height} image "
            f"(x must be 0..{width - 1}, y 0..{height - 1}, in pixels of the input image)"
        )
    return x, y


def _check_box(xyxy: tuple, name: str, shown: Any, width: int, height: int, image: str) -> tuple:
    x0, y0, x1, y1 = xyxy
    if not (x1 > x0 and y1 > y0):
        raise PromptError(f"{name}: box {shown}{image} has no area; its width and height must be positive")
    if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
        raise PromptError(f"{name}: box {shown}{image} lies entirely outside the {width}x{height} image")
    return max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _label(v: Any, image: str) -> int:
    if _is_number(v) and v in (0, 1):
        return int(v)
    raise PromptError(f"point_label values must be 1 (foreground) or 0 (background), got {v!r}{image}")


def xywh_to_xyxy(box: Sequence) -> tuple:
    x, y, w, h = box
    return x, y, x + w, y + h


# ---------------------------------------------------------------- the entry point


def parse_prompts(
    batch: int,
    width: int,
    height: int,
    point_prompt: Any = NO_POINT.text,
    point_label: Any = NO_LABEL.text,
    box_prompt: Any = NO_BOX.text,
    bboxes: Any = None,
    positive_coords: Any = None,
    negative_coords: Any = None,
    xyxy_boxes: Any = None,
) -> list[ImagePrompts]:
    """Every prompt input → one :class:`ImagePrompts` per image, checked against the image size."""
    if batch < 1 or width < 1 or height < 1:
        raise ValueError(f"parse_prompts needs a non-empty batch, got batch={batch}, {width}x{height}")
    points = _per_image(load_json(point_prompt, "point_prompt"), _is_pair, batch, "point_prompt")
    labels = _per_image(load_json(point_label, "point_label"), _is_number, batch, "point_label")
    boxes = _per_image(load_json(box_prompt, "box_prompt"), _is_quad, batch, "box_prompt")
    positive = _per_image(_xy_items(positive_coords, "positive_coords"), _is_pair, batch, "positive_coords")
    negative = _per_image(_xy_items(negative_coords, "negative_coords"), _is_pair, batch, "negative_coords")
    core_boxes = _per_image(load_json(bboxes, "bboxes"), _is_box_dict, batch, "bboxes")
    corner_boxes = _per_image(load_json(xyxy_boxes, "xyxy_boxes"), _is_quad, batch, "xyxy_boxes")

    out = []
    for i in range(batch):
        image = f" (image {i + 1} of the batch)" if batch > 1 else ""
        pts: list = []
        lbs: list = []
        if len(points[i]) != len(labels[i]):
            raise PromptError(
                f"point_label has {len(labels[i])} label{'s' if len(labels[i]) != 1 else ''} but point_prompt has "
                f"{len(points[i])} point{'s' if len(points[i]) != 1 else ''}{image}; give one label (1 or 0) per point"
            )
        for p, lab in zip(points[i], labels[i]):
            lab = _label(lab, image)
            if NO_POINT.matches(p):
                continue  # fal's "no point" default
            pts.append(_check_point(p, "point_prompt", width, height, image))
            lbs.append(lab)
        for p in positive[i]:
            pts.append(_check_point(p, "positive_coords", width, height, image))
            lbs.append(1)
        for p in negative[i]:
            pts.append(_check_point(p, "negative_coords", width, height, image))
            lbs.append(0)

        bxs: list = []
        for b in boxes[i]:
            if NO_BOX.matches(b):
                continue  # fal's "no box" default
            xywh = _finite(b, "box_prompt", list(b))
            bxs.append(_check_box(xywh_to_xyxy(xywh), "box_prompt", list(b), width, height, image))
        for d in core_boxes[i]:
            xywh = _finite([d["x"], d["y"], d["width"], d["height"]], "bboxes", d) if _box_values_are_numbers(d) else None
            if xywh is None:
                raise PromptError(f"bboxes: {_clip(repr(d))}{image} needs numeric x, y, width and height")
            shown = {k: d[k] for k in ("x", "y", "width", "height")}
            bxs.append(_check_box(xywh_to_xyxy(xywh), "bboxes", shown, width, height, image))
        for b in corner_boxes[i]:
            bxs.append(_check_box(_finite(b, "xyxy_boxes", list(b)), "xyxy_boxes", list(b), width, height, image))
        out.append(ImagePrompts(tuple(pts), tuple(lbs), tuple(bxs)))
    return out


def _box_values_are_numbers(d: dict) -> bool:
    return all(_is_number(d[k]) for k in ("x", "y", "width", "height"))


def _xy_items(value: Any, name: str) -> Any:
    """KJNodes ``{"x", "y"}`` dicts → ``[x, y]`` pairs, at any nesting level; other items unchanged."""
    data = load_json(value, name)

    def convert(item: Any) -> Any:
        if isinstance(item, dict):
            if not _is_xy_dict(item):
                raise PromptError(f"{name}: each point needs an x and a y, got {_clip(repr(item))}. {_EXPECTED[name]}")
            return [item["x"], item["y"]]
        if isinstance(item, (list, tuple)) and not _is_pair(item):
            return [convert(v) for v in item]
        return item

    converted = convert(data)
    # a pair whose values are not numbers (e.g. {"x": "5"}) must fail as a point, not as nesting
    for item in _leaves(converted):
        if isinstance(item, (list, tuple)) and len(item) == 2 and not _is_pair(item):
            raise PromptError(f"{name}: point {_clip(repr(item))} needs numeric x and y. {_EXPECTED[name]}")
    return converted


def _leaves(data: Any):
    if isinstance(data, (list, tuple)) and data and all(isinstance(v, (list, tuple)) for v in data):
        for v in data:
            yield from _leaves(v)
    else:
        yield data

