"""Conversions between ComfyUI tensors, numpy arrays and files.

ComfyUI's IMAGE is ``[B,H,W,C]`` float in 0..1 (C is 3, sometimes 4 or 1 from other nodes);
MASK is ``[B,H,W]`` float in 0..1 (some nodes hand over ``[H,W]``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps


def as_image_batch(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Return ``image`` as ``[B,H,W,3]`` float32 on its device.

    Accepts ``[H,W,C]`` and ``[B,H,W,C]`` with C in {1, 3, 4}. Alpha is dropped (the pixels'
    colour is what SAM sees; ComfyUI's LoadImage gives alpha as a separate MASK anyway).
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be an IMAGE tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise ValueError(f"{name} must be an IMAGE tensor [batch, height, width, channels], got shape {tuple(image.shape)}")
    b, h, w, c = image.shape
    if b == 0 or h == 0 or w == 0:
        raise ValueError(f"{name} is empty (shape {tuple(image.shape)})")
    if c == 1:
        image = image.expand(b, h, w, 3)
    elif c == 4:
        image = image[..., :3]
    elif c == 2:  # grey + alpha
        image = image[..., :1].expand(b, h, w, 3)
    elif c != 3:
        raise ValueError(f"{name} has {c} channels; expected 1, 3 or 4 (is it a MASK or a latent?)")
    return image.float()


def as_mask_batch(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """Return ``mask`` as ``[B,H,W]`` float32."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise ValueError(f"{name} must be a MASK tensor [batch, height, width], got shape {tuple(mask.shape)}")
    return mask.float()


def to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    """One ``[H,W,C]`` image (float 0..1, C in {1,3,4}) to an ``[H,W,3]`` uint8 array."""
    batch = as_image_batch(image)
    if batch.shape[0] != 1:
        raise ValueError("to_uint8_rgb takes one image; index the batch first")
    arr = (batch[0].clamp(0, 1) * 255.0).round().to(torch.uint8)
    return arr.cpu().numpy()


def from_uint8_rgb(array: np.ndarray) -> torch.Tensor:
    """``[H,W,3]`` uint8 to a ``[1,H,W,3]`` float IMAGE."""
    return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0).unsqueeze(0)


def load_image_file(path: str | Path) -> torch.Tensor:
    """Read an image file (any PIL format; EXIF orientation applied) as ``[1,H,W,3]``."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        rgb = img.convert("RGB")
        return from_uint8_rgb(np.asarray(rgb))


def decode_image_bytes(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img)
        return from_uint8_rgb(np.asarray(img.convert("RGB")))


def encode_png(image: torch.Tensor) -> bytes:
    """One image (``[H,W,C]`` or ``[1,H,W,C]``) as PNG bytes (lossless, no metadata)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8_rgb(image)).save(buf, format="PNG")
    return buf.getvalue()


def encode_mask_png(mask: torch.Tensor) -> bytes:
    """One ``[H,W]`` mask as an 8-bit greyscale PNG."""
    arr = (mask.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def save_atomically(data: bytes, path: str | Path) -> None:
    """Write a file so that readers see either nothing or the whole file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as fh:
        fh.write(data)
    tmp.replace(path)
