"""Conversions between ComfyUI tensors, numpy arrays and files, and the pack's one image codec.

ComfyUI's IMAGE is ``[B,H,W,C]`` float in 0..1 (C is 3, sometimes 4 or 1 from other nodes);
MASK is ``[B,H,W]`` float in 0..1 (some nodes hand over ``[H,W]``).

Every PNG the pack writes (CLI files, the server's results, the remote nodes' uploads) is made
by :func:`png_bytes`, and every image file or upload it reads is decoded here (:func:`read_image`,
:func:`read_image_and_alpha`), so the CLI, the server and the remote nodes agree on pixels.
"""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageOps

from .sniff import describe_head, read_head


#: how far past 0..1 an IMAGE may ring (resampler overshoot) before it is refused, not clamped
OVERSHOOT = 0.5


def as_image_batch(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Return ``image`` as ``[B,H,W,3]`` float32 on its device.

    Accepts ``[H,W,C]`` and ``[B,H,W,C]`` with C in {1, 2, 3, 4} (grey, grey + alpha, RGB,
    RGBA). Alpha is dropped (the pixels' colour is what SAM sees; ComfyUI's LoadImage gives alpha
    as a separate MASK anyway).

    Values are ComfyUI's 0..1 floats. Small overshoots (resamplers ring a little past 0 and 1) are
    clamped later, as ComfyUI's own SaveImage does; an integer tensor, NaN/inf, or values far
    outside 0..1 (an image still in 0..255) raise ``ValueError`` instead of being segmented as a
    black or white frame.
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
        raise ValueError(f"{name} has {c} channels; expected 1 to 4 (is it a MASK or a latent?)")
    if not (image.is_floating_point() or image.dtype == torch.bool):
        raise ValueError(f"{name} is a {str(image.dtype).replace('torch.', '')} tensor; an IMAGE holds floats "
                         "from 0 to 1 (divide 8-bit values by 255)")
    image = image.float()
    low, high = torch.aminmax(image)
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} has NaN or infinite pixel values; check the node that made it")
    if low < -OVERSHOOT or high > 1.0 + OVERSHOOT:
        hint = " (it looks like 0..255: divide by 255)" if high > 2.0 else ""
        raise ValueError(f"{name} has pixel values from {low:.3g} to {high:.3g}; an IMAGE holds values from 0 to 1{hint}")
    return image


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


class ImageDecodeError(ValueError):
    """An image file or upload that cannot become the right picture; the message names it and says what to do."""


#: Pillow's unsigned 16-bit greyscale modes (16-bit PNG and TIFF open as these since Pillow 10)
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _from_16bit(values: np.ndarray) -> np.ndarray:
    """0..65535 → 0..255, rounded to nearest (v·255/65535 is never exactly halfway)."""
    return ((values.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)


def rgb8_from_pil(img: Image.Image, name: str = "image") -> np.ndarray:
    """One decoded Pillow frame as the ``[H,W,3]`` uint8 RGB picture SAM sees.

    The rules (ComfyUI's ``LoadImage`` where it gets the picture right, noted where not):

    * 8-bit modes (``L``, ``RGB``, ``P``, ``1``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ...): Pillow's
      ``convert("RGB")``, as ComfyUI does. ``1`` is 0/255; palette entries keep their colour;
      CMYK uses Pillow's formula ``R = (255-C)(255-K)/255`` (no ICC colour management, like ComfyUI).
    * Alpha (``RGBA``, ``LA``, ``PA``, a palette with transparency): dropped, the colour under it is
      kept, not composited. ComfyUI does the same and hands alpha over as a separate MASK.
    * 16-bit greyscale (``I;16*``: 16-bit PNG and TIFF): full range, ``round(v·255/65535)``. ComfyUI
      differs: with current Pillow these files open as ``I;16`` and its ``convert("RGB")`` clips
      every value above 255 to white (a 16-bit ramp becomes 3 colours); its rule for ``I`` (divide
      by 255, then clip) saturates the top 0.4 % of the range.
    * 32-bit integer (``I``): read as 16-bit data, as ComfyUI reads it, when every value is in
      0..65535; other values have no agreed 8-bit meaning, so the image is refused.
    * 32-bit float (``F``): judged by its range. In 0..1: ``round(v·255)``; else in 0..255:
      ``round(v)`` (Pillow's own scale for ``F``). NaN, infinity, negative values or values above
      255 are refused (there is no right picture to guess).

    Raises :class:`ImageDecodeError` naming ``name`` and what to do.
    """
    mode = img.mode
    if mode in _UINT16_MODES:
        grey = _from_16bit(np.asarray(img))
    elif mode == "I":
        values = np.asarray(img)
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi > 65535:
            raise ImageDecodeError(
                f"{name} holds 32-bit integer pixels from {lo} to {hi}, beyond the 16-bit range 0..65535; "
                "there is no standard way to show them as an 8-bit picture. Convert it to 8- or 16-bit first "
                "(choosing the brightness range you want to see).")
        grey = _from_16bit(values)
    elif mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ImageDecodeError(f"{name} holds floating-point pixels that are NaN or infinite; "
                                   "replace them and save it again (or save it as 8- or 16-bit).")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0.0 or hi > 255.0:
            raise ImageDecodeError(
                f"{name} holds floating-point pixels from {lo:g} to {hi:g}; SAM Kit reads float images in 0..1 "
                "or 0..255 only. Scale it into 0..1 (or save it as 8- or 16-bit) first.")
        scale = 255.0 if hi <= 1.0 else 1.0
        grey = np.floor(values * scale + 0.5).astype(np.uint8)
    elif mode == "P" and "transparency" in img.info:
        # through RGBA: Pillow warns when a palette's transparency is dropped by convert("RGB")
        return np.array(img.convert("RGBA"))[..., :3].copy()
    else:
        try:
            return np.array(img.convert("RGB"))  # a writable copy: torch warns about read-only arrays
        except ValueError:
            raise ImageDecodeError(f"{name} has the pixel mode {mode}, which Pillow cannot convert to RGB; "
                                   "save it as an 8-bit RGB PNG or JPEG first.") from None
    return np.repeat(grey[..., None], 3, axis=2)


# Pillow raises many kinds for damaged or foreign data; all mean "not a readable image".
# (ImportError: once ultralytics is imported it patches Image.open to retry unreadable files as
# HEIF, which fails with ModuleNotFoundError when pi-heif is not installed.)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError, struct.error,
                  ImportError, Image.DecompressionBombError)


def _unreadable(name: str, head: bytes, exc: BaseException) -> ImageDecodeError:
    looks = describe_head(head)
    truncated = isinstance(exc, OSError) and "truncated" in str(exc)
    if looks and "HEIF" in looks:
        return ImageDecodeError(f"{name} is {looks}, which this Pillow cannot read; install pillow-heif "
                                "or save it as PNG or JPEG.")
    if truncated or (looks and looks.endswith(" image")):  # the format is known, the data is broken
        kind = looks if looks and looks.endswith(" image") else "an image"
        return ImageDecodeError(f"{name} is {kind} that is truncated or damaged; export or download it again.")
    what = f"{looks}, not an image" if looks else "not in an image format Pillow can read"
    return ImageDecodeError(f"{name} is {what}; give a PNG, JPEG, WebP, TIFF or BMP file.")


def read_image(source: str | Path | bytes, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file (a path) or its bytes to ``[H,W,3]`` uint8 RGB (:func:`rgb8_from_pil`).

    EXIF orientation is applied (as ComfyUI does). Of a multi-frame file (GIF, APNG, TIFF pages)
    the first frame is read: every caller takes one picture per file (ComfyUI's LoadImage makes
    a batch of the frames instead). A truncated file is refused, where ComfyUI would fill the
    missing part with grey. ``max_pixels`` refuses larger images before their pixels are decoded.

    Raises :class:`ImageDecodeError` (a ``ValueError``) naming ``name`` (default: the path, or
    "image") for anything that does not decode to the right picture.
    """
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    name = name or ("image" if is_bytes else str(source))
    if not is_bytes:
        path = Path(source)
        if path.is_dir():
            raise ImageDecodeError(f"{name} is a folder, not an image file.")
        try:
            head = read_head(path)
        except OSError as exc:
            raise ImageDecodeError(f"cannot read {name}: {exc.strerror or exc}") from None
        opener = lambda: Image.open(path)  # noqa: E731
    else:
        head = bytes(source[:512])
        opener = lambda: Image.open(io.BytesIO(source))  # noqa: E731
    try:
        with opener() as img:
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageDecodeError(f"{name} is {w}x{h}; at most {max_pixels} pixels are accepted. "
                                       "Scale it down first.")
            img.seek(0)
            img.load()
            return rgb8_from_pil(ImageOps.exif_transpose(img), name)
    except ImageDecodeError:
        raise
    except _DECODE_ERRORS as exc:
        raise _unreadable(name, head, exc) from None


def load_image_file(path: str | Path, max_pixels: int | None = None) -> torch.Tensor:
    """Read an image file as a ``[1,H,W,3]`` IMAGE by :func:`read_image`'s rules."""
    return from_uint8_rgb(read_image(path, max_pixels=max_pixels))


def decode_image_bytes(data: bytes, name: str = "image", max_pixels: int | None = None) -> torch.Tensor:
    """Decode image bytes (an upload) as a ``[1,H,W,3]`` IMAGE by :func:`read_image`'s rules."""
    return from_uint8_rgb(read_image(data, name, max_pixels))


def read_image_and_alpha(data: bytes, name: str) -> tuple[np.ndarray, Optional[np.ndarray], bool]:
    """Decode image bytes keeping transparency: ``(pixels, alpha, lossless)``.

    ``pixels`` ``[H,W,3]`` uint8 RGB: the colour under any alpha (not composited); files without
    alpha by :func:`rgb8_from_pil`'s rules. ``alpha`` ``[H,W]`` uint8, or ``None`` when the file
    has none or it is 255 everywhere. ``lossless``: the format stores pixels exactly (PNG, BMP,
    TIFF, GIF). EXIF orientation is applied. Raises :class:`ImageDecodeError` naming ``name``.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            lossless = img.format in ("PNG", "BMP", "TIFF", "GIF")  # before exif_transpose: its copy has no format
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                alpha = np.asarray(rgba)[..., 3].copy()
                return np.asarray(rgba.convert("RGB")).copy(), (None if alpha.min() == 255 else alpha), lossless
            return rgb8_from_pil(img, name), None, lossless
    except ImageDecodeError:
        raise
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(f"{name} is not a readable image ({type(exc).__name__})") from None


def image_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of encoded image bytes, read from the header. Raises Pillow's errors."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def png_bytes(pixels: np.ndarray, compress_level: int = -1) -> bytes:
    """``[H,W,3]`` RGB or ``[H,W]`` greyscale uint8 pixels as PNG bytes (lossless, no metadata).

    ``compress_level`` is zlib's 0..9 (-1: Pillow's default, 6); it trades size for speed and
    never changes the pixels.
    """
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_png(image: torch.Tensor) -> bytes:
    """One image (``[H,W,C]`` or ``[1,H,W,C]``, float 0..1) as PNG bytes (:func:`png_bytes`)."""
    return png_bytes(to_uint8_rgb(image))


def encode_mask_png(mask: torch.Tensor) -> bytes:
    """One ``[H,W]`` mask (float 0..1) as an 8-bit greyscale PNG."""
    return png_bytes((mask.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy())


def save_atomically(data: bytes, path: str | Path) -> None:
    """Write a file so that readers see either nothing or the whole file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as fh:
        fh.write(data)
    tmp.replace(path)
