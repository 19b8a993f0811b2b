"""The two endpoints' inputs and outputs, shared by the client (``client``/``remote``) and the
self-hosted server, so both ends agree on one definition.

``fal-ai/tiny-sam`` (fal's published schema, field names verbatim; defaults and ranges from
``samkit/tiny_sam_params.py``, which cites fal): ``image_url`` (required), ``size``,
``confidence``, ``box_prompt`` ``[[x,y,w,h],...]``, ``point_prompt`` ``[[x,y],...]``,
``point_label`` ``[1|0,...]``. fal publishes no ``iou`` field, so neither end uses one (the
self-hosted server runs FastSAM with the local node's default).

``fal-ai/image-preprocessors/sam``: ``image_url`` only.

The self-hosted server also accepts ``sampling`` on both endpoints (everything mode's prompts,
``samkit/sampling_params.py``: ``grid``, ``hierarchical``, ``object-aware``; its default is the
server's ``--sampling``). fal's own endpoints do not know it, so the pack's client never sends it.

Both answer ``{"image": {"url", "content_type", "file_name", "file_size", "width", "height"}}``.

Validation follows pydantic's rules as FastAPI reports them (``{"loc": ["body", field],
"msg", "type"}``): unknown fields are refused so a schema drift between the two ends shows up
as a 422 (and as a failing test), not as a silently ignored parameter.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..sampling_params import SAMPLING
from ..tiny_sam_params import CONFIDENCE, NO_BOX, NO_LABEL, NO_POINT, SIZE

TINY_SAM = "fal-ai/tiny-sam"
SEGMENTATION_MAP = "fal-ai/image-preprocessors/sam"
ENDPOINT_IDS = (TINY_SAM, SEGMENTATION_MAP)
#: fal's everything-mode endpoint; its shapes are in :mod:`.sam3_schemas`
SAM2_AUTO_SEGMENT = "fal-ai/sam2/auto-segment"
#: the routes of the pack deployed as a fal App (``samkit/fal/app.py``): fal's endpoint id →
#: the path under ``<owner>/<app>``, answered with that endpoint's schema
APP_ROUTES = {TINY_SAM: "tiny-sam", SEGMENTATION_MAP: "segmentation-map", SAM2_AUTO_SEGMENT: "auto-segment"}

#: fal toolkit's limits for image inputs (``fal/toolkit/types.py``)
MAX_DATA_URI_CHARS = 10 * 1024 * 1024
MAX_HTTPS_URL_CHARS = 2048

TINY_SAM_DEFAULTS = {
    "size": SIZE.default,
    "confidence": CONFIDENCE.default,
    "box_prompt": NO_BOX.value,
    "point_prompt": NO_POINT.value,
    "point_label": NO_LABEL.value,
}
SIZE_RANGE = (SIZE.min, SIZE.max)

# any MIME type (or none, RFC 2397): the image is judged by its bytes when decoded, not by its label
_DATA_URI = re.compile(r"^data:([A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+)?(;[^,;]+=[^,;]*)*;base64,", re.ASCII)
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


# ------------------------------------------------------------------ endpoint ids


@dataclass(frozen=True)
class AppId:
    """``owner/alias[/path]``. Per-request URLs (status, result, cancel) use owner/alias only."""

    owner: str
    alias: str
    path: str = ""

    @classmethod
    def parse(cls, endpoint_id: str) -> "AppId":
        parts = str(endpoint_id).strip("/").split("/")
        if len(parts) < 2 or not all(_SEGMENT.match(p) and p not in (".", "..") for p in parts):
            raise ValueError(f"invalid fal endpoint id {endpoint_id!r}; expected owner/app[/path], e.g. {TINY_SAM}")
        return cls(parts[0], parts[1], "/".join(parts[2:]))

    @property
    def endpoint_id(self) -> str:
        return "/".join(p for p in (self.owner, self.alias, self.path) if p)

    @property
    def queue_app(self) -> str:
        """The part of the URL that status/result/cancel live under."""
        return f"{self.owner}/{self.alias}"


# ------------------------------------------------------------------ validation


def _err(loc: list, msg: str, type_: str) -> dict:
    return {"loc": ["body", *loc], "msg": msg, "type": type_}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_image_url(value: Any, loc: list) -> list[dict]:
    """fal's ``ImageInput``: an https URL (≤ 2048 chars) or a base64 data URI (≤ 10 MiB) of any
    MIME type (whether it holds an image is decided from its bytes)."""
    if not isinstance(value, str):
        return [_err(loc, "Input should be a valid string", "string_type")]
    if value.startswith("data:"):
        if len(value) > MAX_DATA_URI_CHARS:
            return [_err(loc, f"Data URI is too long ({len(value)} characters; at most {MAX_DATA_URI_CHARS})", "string_too_long")]
        if not _DATA_URI.match(value):
            return [_err(loc, "Data URI must look like data:<type>;base64,<data>", "value_error")]
        return []
    if value.startswith("https://"):
        if len(value) > MAX_HTTPS_URL_CHARS:
            return [_err(loc, f"URL should have at most {MAX_HTTPS_URL_CHARS} characters", "string_too_long")]
        return []
    return [_err(loc, "Input should be an https:// URL or a data:image/...;base64 URI", "value_error")]


def _check_number(body: dict, name: str, low: float, high: float, integer: bool) -> list[dict]:
    if name not in body:
        return []
    v = body[name]
    if integer and not _is_int(v):
        return [_err([name], "Input should be a valid integer", "int_type")]
    if not integer and not _is_number(v):
        return [_err([name], "Input should be a valid number", "float_type")]
    if not low <= v <= high:
        return [_err([name], f"Input should be between {low} and {high}", "value_error")]
    return []


def _check_list_of_lists(body: dict, name: str, width: int) -> list[dict]:
    if name not in body:
        return []
    v = body[name]
    if not isinstance(v, list):
        return [_err([name], "Input should be a valid list", "list_type")]
    errors = []
    for i, item in enumerate(v):
        if not (isinstance(item, list) and len(item) == width and all(_is_number(x) for x in item)):
            errors.append(_err([name, i], f"Input should be a list of {width} numbers", "value_error"))
    return errors


def _check_labels(body: dict) -> list[dict]:
    if "point_label" not in body:
        return []
    v = body["point_label"]
    if not isinstance(v, list):
        return [_err(["point_label"], "Input should be a valid list", "list_type")]
    errors = [_err(["point_label", i], "Input should be 0 (background) or 1 (foreground)", "value_error")
              for i, lab in enumerate(v) if not (_is_int(lab) and lab in (0, 1))]
    points = body.get("point_prompt", TINY_SAM_DEFAULTS["point_prompt"])
    if not errors and isinstance(points, list) and len(points) != len(v):
        errors.append(_err(["point_label"], f"point_label has {len(v)} labels but point_prompt has {len(points)} points", "value_error"))
    return errors


def _check_fields(body: Any, allowed: tuple) -> tuple[Optional[dict], list[dict]]:
    if not isinstance(body, dict):
        return None, [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]
    errors = []
    if "image_url" not in body:
        errors.append(_err(["image_url"], "Field required", "missing"))
    else:
        errors += check_image_url(body["image_url"], ["image_url"])
    errors += [_err([k], "Extra inputs are not permitted", "extra_forbidden") for k in body if k not in allowed]
    return body, errors


#: fields only the self-hosted server knows (see the module docstring)
SERVER_EXTRAS = ("sampling",)


def _check_sampling(body: dict) -> list[dict]:
    if "sampling" not in body or body["sampling"] in SAMPLING:
        return []
    return [_err(["sampling"], f"Input should be {', '.join(repr(s) for s in SAMPLING)}", "enum")]


def validate_tiny_sam(body: Any) -> list[dict]:
    """Errors in fal's 422 ``detail`` shape; empty when ``body`` is a valid tiny-sam input."""
    body, errors = _check_fields(body, ("image_url", *TINY_SAM_DEFAULTS, *SERVER_EXTRAS))
    if body is None:
        return errors
    errors += _check_number(body, "size", *SIZE_RANGE, integer=True)
    errors += _check_number(body, "confidence", CONFIDENCE.min, CONFIDENCE.max, integer=False)
    errors += _check_list_of_lists(body, "box_prompt", 4)
    errors += _check_list_of_lists(body, "point_prompt", 2)
    errors += _check_labels(body)
    return errors + _check_sampling(body)


def validate_segmentation_map(body: Any) -> list[dict]:
    body, errors = _check_fields(body, ("image_url", *SERVER_EXTRAS))
    return errors if body is None else errors + _check_sampling(body)


VALIDATORS: dict[str, Callable[[Any], list]] = {TINY_SAM: validate_tiny_sam, SEGMENTATION_MAP: validate_segmentation_map}


def with_tiny_sam_defaults(body: dict) -> dict:
    return {**TINY_SAM_DEFAULTS, **body}


# ------------------------------------------------------------------ building inputs


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def decode_data_uri(uri: str, max_bytes: int = MAX_DATA_URI_CHARS) -> tuple[str, bytes]:
    """``data:<mime>[;params];base64,<payload>`` → (mime, bytes). Raises ValueError."""
    head, sep, payload = uri.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise ValueError("not a base64 data URI")
    if len(payload) > (max_bytes * 4) // 3 + 4:
        raise ValueError(f"data URI holds more than {max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("data URI is not valid base64") from None
    return head[5:].split(";")[0], data


def _plain_number(v: float) -> float | int:
    return int(v) if float(v).is_integer() else float(v)


def tiny_sam_arguments(image_url: str, size: int, confidence: float, points, labels, corner_boxes) -> dict:
    """A tiny-sam input from already checked prompts: pixel ``points`` with their ``labels`` and
    ``corner_boxes`` ``(x0, y0, x1, y1)`` (what ``prompts.parse_prompts`` gives), sent as fal's
    ``[x, y, w, h]`` boxes.

    No prompt is written as fal's defaults (``tiny_sam_params.NO_POINT`` etc.), which both fal
    and the local code read as "no prompt".
    """
    boxes = [[_plain_number(v) for v in (x0, y0, x1 - x0, y1 - y0)] for x0, y0, x1, y1 in corner_boxes]
    return {
        "image_url": image_url,
        "size": int(size),
        "confidence": float(confidence),
        "box_prompt": boxes or TINY_SAM_DEFAULTS["box_prompt"],
        "point_prompt": [[_plain_number(v) for v in p] for p in points] or TINY_SAM_DEFAULTS["point_prompt"],
        "point_label": [int(v) for v in labels] or TINY_SAM_DEFAULTS["point_label"],
    }


def segmentation_map_arguments(image_url: str) -> dict:
    return {"image_url": image_url}


# ------------------------------------------------------------------ outputs


@dataclass(frozen=True)
class ImageRef:
    url: str
    content_type: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None
    file_size: Optional[int] = None


def image_output(url: str, width: int, height: int, file_size: int, file_name: str,
                 content_type: str = "image/png") -> dict:
    return {"image": {"url": url, "content_type": content_type, "file_name": file_name,
                      "file_size": file_size, "width": width, "height": height}}


def parse_image_output(body: Any) -> ImageRef:
    """``{"image": {"url": ...}}`` → :class:`ImageRef`. Raises ValueError when malformed."""
    image = body.get("image") if isinstance(body, dict) else None
    if not isinstance(image, dict) or not isinstance(image.get("url"), str) or not image["url"]:
        keys = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise ValueError(f"the result has no image URL (expected {{'image': {{'url': ...}}}}, got keys {keys})")

    def opt_int(name):
        v = image.get(name)
        return v if _is_int(v) else None

    ct = image.get("content_type")
    return ImageRef(image["url"], ct if isinstance(ct, str) else None, opt_int("width"), opt_int("height"),
                    opt_int("file_size"))
