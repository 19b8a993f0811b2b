"""The Tiny SAM "combined image": every object tinted over the input image, like FastSAM's plot.

Object ``k`` always gets colour ``k`` of the pack's seeded palette (``painting.palette``), so the
colours are deterministic and adding an object never recolours the others. Larger objects are
painted first, so a small object lying on a larger one stays visible. Pixels outside every object
keep the input image unchanged. Pure torch; runs on the masks' device.
"""

from __future__ import annotations

import torch

from .painting import area_order, label_map, palette

#: how strongly an object's colour covers the image (FastSAM's plot uses 0.6)
OVERLAY_ALPHA = 0.6


def paint_objects(image: torch.Tensor, masks: torch.Tensor, alpha: float = OVERLAY_ALPHA, seed: int = 0) -> torch.Tensor:
    """``image`` ``[H,W,3]`` (float 0..1) with the objects of ``masks`` ``[N,H,W]`` (any nonzero value
    covers) tinted over it; where objects overlap, the smaller one is on top."""
    if masks.shape[0] == 0:
        return image.clone()
    return paint_labels(image, label_map(masks.bool(), area_order(masks).tolist()), masks.shape[0], alpha, seed)


def paint_labels(image: torch.Tensor, labels, count: int, alpha: float = OVERLAY_ALPHA, seed: int = 0) -> torch.Tensor:
    """``image`` ``[H,W,3]`` tinted by a label map ``[H,W]`` (int torch or numpy; object k, -1 for none) of ``count`` objects."""
    if count == 0:
        return image.clone()
    labels = torch.as_tensor(labels).to(image.device).long()
    colours = torch.as_tensor(palette(count, seed), device=image.device).float().div_(255.0)
    # one extra (unused) colour for label -1, so the tint is a plain gather over the whole frame:
    # whole-frame passes are several times faster than boolean-indexed ones on large images
    colours = torch.cat([colours, colours.new_zeros((1, 3))]).to(image.dtype)
    tint = colours[labels]
    return torch.where((labels >= 0)[..., None], image * (1.0 - alpha) + tint * alpha, image)
