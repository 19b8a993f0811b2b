"""Run-length encoded masks as ``fal-ai/sam-3/image-rle`` answers them, decoded to bool ``[H,W]``.

fal's types describe the string as "Run-length encoding (Kaggle/COCO order) of the mask"
(``SAM3ObjectMask.rle`` in fal-js ``endpoints.ts``). Both conventions number the pixels the same
way: column by column, top to bottom inside a column, left to right across columns (Fortran
order; COCO's ``maskApi.h``: "RLE is encoded in column-major order"). Accepted forms:

* **Kaggle** ``"start length start length ..."``: 1-based start pixel and run length of each
  run of mask pixels (the format of Kaggle's segmentation competitions' submission files);
* **COCO** ``{"size": [h, w], "counts": ...}`` (or that object as a JSON string): ``counts``
  alternates runs of 0s and 1s, starting with 0s, either a list of integers (uncompressed) or
  pycocotools' compressed string (``rleToString``: 6-bit chunks + 48, deltas after the second
  count; ``maskApi.c``).

The string itself carries no size: a Kaggle RLE is read at the input image's size (a run that
ends past the last pixel is refused); a COCO RLE states its size, and a mask of another size is
resized by the caller like a mask image.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

_KAGGLE = re.compile(r"^\s*\d+(\s+\d+)*\s*$")
# A COCO RLE states its own size; fal answers masks at the input's size, so one far larger is a
# broken answer, refused before it is expanded (a stated 3e6 x 3e6 would ask for terabytes).
# 16x the image's pixels allows a 4x upscale on each side; the floor keeps small images usable.
COCO_AREA_FACTOR = 16
COCO_MIN_AREA = 4096 * 4096


class RLEError(ValueError):
    """An RLE that cannot be read; the message says what is wrong."""


def decode_rle(value: Any, height: int, width: int) -> np.ndarray:
    """One RLE (Kaggle string, COCO dict or COCO JSON string) → bool mask.

    Kaggle strings are read at ``height`` x ``width``; COCO ones at their own ``size`` (at most
    ``COCO_AREA_FACTOR`` times ``height * width`` pixels, or ``COCO_MIN_AREA``). Raises :class:`RLEError`.
    """
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # RecursionError: nesting past Python's parser
            raise RLEError("the RLE looks like JSON but does not parse") from None
    if isinstance(value, dict):
        return _decode_coco(value, max(COCO_AREA_FACTOR * height * width, COCO_MIN_AREA))
    if not isinstance(value, str):
        raise RLEError(f"an RLE must be a string or a COCO object, got {type(value).__name__}")
    if not value.strip():
        return np.zeros((height, width), bool)
    if not _KAGGLE.match(value):
        raise RLEError(f"the RLE {value[:40]!r} is neither 'start length ...' pairs nor a COCO object")
    total = height * width
    words = value.split()
    if len(words) % 2:
        raise RLEError(f"the RLE has {len(words)} numbers; 'start length' pairs need an even count")
    if any(int(word) > total for word in words):  # before int64: a larger number would overflow or index past
        raise RLEError(f"the RLE runs past the last pixel of a {width}x{height} mask; is it for another size?")
    numbers = np.array(words, dtype=np.int64)
    starts, lengths = numbers[0::2] - 1, numbers[1::2]
    if (starts < 0).any():
        raise RLEError("an RLE start is 0; Kaggle RLE starts count from 1")
    if (starts + lengths > total).any():
        raise RLEError(f"the RLE runs past the last pixel of a {width}x{height} mask; is it for another size?")
    flat = np.zeros(total, np.int8)
    np.add.at(flat, starts, 1)  # run starts +1, run ends -1: the cumulative sum is 1 inside runs
    ends = starts + lengths
    np.add.at(flat, ends[ends < total], -1)
    return (np.cumsum(flat) > 0).reshape(width, height).T


def _coco_counts(counts: Any) -> list[int]:
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise RLEError("COCO RLE counts must be non-negative integers")
        return counts
    if not isinstance(counts, str):
        raise RLEError("COCO RLE counts must be a list of integers or a compressed string")
    out: list[int] = []
    data, p = counts.encode("ascii", "replace"), 0
    while p < len(data):
        x = k = 0
        more = True
        while more:
            if p >= len(data):
                raise RLEError("the compressed COCO counts end in the middle of a number")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise RLEError("the compressed COCO counts hold a character outside pycocotools' alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    if any(c < 0 for c in out):
        raise RLEError("the compressed COCO counts decode to a negative run")
    return out


def _decode_coco(rle: dict, max_area: int) -> np.ndarray:
    size = rle.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise RLEError("a COCO RLE needs 'size': [height, width]")
    h, w = size
    if h * w > max_area:
        raise RLEError(f"the COCO RLE's size {h}x{w} is larger than {max_area} pixels, the most read for an image this size; "
                       "it is not a mask for this image")
    counts = _coco_counts(rle.get("counts"))
    if sum(counts) != h * w:
        raise RLEError(f"the COCO RLE counts cover {sum(counts)} pixels, not {h}x{w}={h * w}")
    values = np.zeros(len(counts), bool)
    values[1::2] = True  # runs alternate 0s, 1s, starting with 0s
    return np.repeat(values, counts).reshape(w, h).T
