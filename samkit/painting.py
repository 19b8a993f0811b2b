"""Painting segments as a colour map (the ControlNet "seg" preprocessor look).

Colours come from a seeded palette and are assigned in area order, so the same segments
and seed always give the same pixels; every colour is an exact 8-bit value, distinct from
the others and from black (the background), which is what lets core ``ImageColorToMask``
and the pack's picker pull one segment back out of a saved map.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .images import as_image_batch

# Palette colours stay away from black so unsegmented pixels are unambiguous.
_MIN_BRIGHTNESS = 60


def palette(count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct RGB colours (uint8 ``[count,3]``), none of them black-ish.

    The first k colours for a seed are the same whatever ``count`` is, so adding a segment
    never recolours the others.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5A4D]))
    colours: list[tuple[int, int, int]] = []
    seen: set[tuple[int, int, int]] = set()
    while len(colours) < count:
        batch = rng.integers(0, 256, size=(max(64, count), 3), dtype=np.int64)
        for rgb in map(tuple, batch):
            if max(rgb) < _MIN_BRIGHTNESS or rgb in seen:
                continue
            seen.add(rgb)
            colours.append(rgb)
            if len(colours) == count:
                break
    return np.asarray(colours, dtype=np.uint8).reshape(count, 3)


def area_order(masks: torch.Tensor) -> torch.Tensor:
    """Indices of ``masks`` (``[N,H,W]``) from largest to smallest area (stable for ties)."""
    return order_by_area(masks.flatten(1).sum(1))


def order_by_area(areas: torch.Tensor) -> torch.Tensor:
    """Indices of ``areas`` (pixel counts ``[N]``) from largest to smallest, ties in their given order."""
    return torch.sort(areas, descending=True, stable=True).indices


def label_map(masks: torch.Tensor, order: Sequence[int] | None = None) -> torch.Tensor:
    """int64 ``[H,W]`` on the masks' device: at each pixel the index of the last mask in ``order``
    (default ``0..N-1``) that covers it, -1 where none does.

    ``masks`` is ``[N,H,W]`` bool, or float where a pixel is covered above 0.5. Every painter in the
    pack colours a label map built this way, so later masks lie on top: pass masks (or ``order``)
    largest first and smaller ones stay visible. ``CompactMasks.label_map`` is the same rule for
    compact masks.
    """
    n, h, w = masks.shape
    labels = torch.full((h, w), -1, dtype=torch.int64, device=masks.device)
    for i in (range(n) if order is None else order):
        labels[masks[i] > 0.5] = int(i)
    return labels


def paint_segments(masks: torch.Tensor, seed: int = 0, colours: np.ndarray | None = None) -> torch.Tensor:
    """Paint bool/float masks ``[N,H,W]`` (already in area order) onto black.

    Larger segments are painted first so smaller ones stay visible on top. Returns a float
    ``[H,W,3]`` map on the masks' device with values that are exact multiples of 1/255.
    """
    if colours is None:
        colours = palette(masks.shape[0], seed)
    return colour_labels(label_map(masks), colours).float() / 255.0


def colour_labels(labels: torch.Tensor | np.ndarray, colours: np.ndarray) -> torch.Tensor:
    """uint8 ``[H,W,3]``: colour ``labels[y, x]`` of ``colours`` at each pixel, black where the label is -1.

    ``labels`` is an int ``[H,W]`` label map (torch or numpy, e.g. ``CompactMasks.label_map``);
    the result is on the labels' device (CPU for numpy).
    """
    labels = torch.as_tensor(labels)
    lut = torch.cat([torch.zeros((1, 3), dtype=torch.uint8), torch.as_tensor(colours, dtype=torch.uint8).reshape(-1, 3)])
    return lut.to(labels.device)[labels.long() + 1]


def colour_mask(seg_map: torch.Tensor, rgb: tuple[int, int, int]) -> torch.Tensor:
    """Pixels of ``seg_map`` (``[B,H,W,3]`` float) that have exactly the 8-bit colour ``rgb``."""
    as_int = (seg_map.clamp(0, 1) * 255.0).round().to(torch.int32)
    target = torch.as_tensor(rgb, dtype=torch.int32, device=seg_map.device)
    return (as_int == target).all(dim=-1).float()


def parse_hex_colour(text: str) -> tuple[int, int, int]:
    """'#ff8800', 'ff8800', '0xff8800' or 'rgb(255,136,0)' → (255, 136, 0)."""
    value = text.strip().lower()
    if value.startswith("rgb(") and value.endswith(")"):
        parts = [p.strip() for p in value[4:-1].split(",")]
        if len(parts) == 3 and all(p.isdigit() and int(p) < 256 for p in parts):
            return tuple(int(p) for p in parts)  # type: ignore[return-value]
    else:
        for prefix in ("#", "0x"):
            if value.startswith(prefix):
                value = value[len(prefix):]
        if len(value) == 6:
            try:
                number = int(value, 16)
            except ValueError:
                number = -1
            if number >= 0:
                return (number >> 16) & 255, (number >> 8) & 255, number & 255
    raise ValueError(f"color {text!r} is not a colour; write it as #rrggbb (for example #ff8800) or rgb(255,136,0)")


def pick_segment(seg_map: torch.Tensor, x: int, y: int, color: str = "") -> torch.Tensor:
    """Mask ``[B,H,W]`` of the pixels sharing the picked colour, per image of the batch.

    With ``color`` set, that colour is used for every image; otherwise the colour under
    (x, y) in each image. Picking the black background gives an empty mask.
    """
    batch = as_image_batch(seg_map, "seg_map")
    b, h, w, _ = batch.shape
    if color.strip():
        rgb = parse_hex_colour(color)
        return colour_mask(batch, rgb)
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"point ({x}, {y}) is outside the {w}x{h} seg_map; x must be 0..{w - 1} and y 0..{h - 1}")
    masks = []
    for i in range(b):
        rgb = tuple(int(v) for v in (batch[i, y, x].clamp(0, 1) * 255.0).round().to(torch.int32).tolist())
        if rgb == (0, 0, 0):  # background: nothing was segmented here
            masks.append(torch.zeros((h, w), dtype=torch.float32, device=batch.device))
        else:
            masks.append(colour_mask(batch[i : i + 1], rgb)[0])
    return torch.stack(masks)
