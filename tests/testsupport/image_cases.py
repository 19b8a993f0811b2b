"""Image files in every pixel mode Pillow opens, each with the RGB picture it must decode to.

``good_cases(h, w)`` → ``{name: (file_bytes, suffix, expected [h,w,3] uint8)}``. Every expected
picture is computed here from the numpy source array, never by Pillow's conversion of the file
(except JPEG, whose pixels only a JPEG decoder can say; there only the orientation is checked).
``bad_cases(h, w)`` → ``{name: (file_bytes, suffix, words the refusal must contain)}``.

The rules being checked are ``samkit.images.rgb8_from_pil``'s: 16-bit full range
(``round(v*255/65535)``), ``I`` as 16-bit data, float by range (0..1 or 0..255), alpha dropped
(colour kept), CMYK by ``(255-C)(255-K)/255``, first frame, EXIF orientation applied.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _grey3(g: np.ndarray) -> np.ndarray:
    return np.repeat(g.astype(np.uint8)[..., None], 3, axis=2)


def _round16(v: np.ndarray) -> np.ndarray:
    # float rounding of v/257 (= v*255/65535): no value is exactly halfway, so no tie rule matters
    return _grey3(np.round(v.astype(np.float64) / 257.0))


def good_cases(h: int = 24, w: int = 32, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    cases = {}

    # 16-bit greyscale: the reported ramp, and random values (PNG and TIFF, both byte orders)
    ramp16 = np.tile(np.linspace(0, 65535, w).astype(np.uint16), (h, 1))
    cases["png_16bit_ramp"] = (_save(Image.fromarray(ramp16), "PNG"), ".png", _round16(ramp16))
    rand16 = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    cases["tiff_16bit"] = (_save(Image.fromarray(rand16), "TIFF"), ".tif", _round16(rand16))
    cases["tiff_16bit_big_endian"] = (_save(Image.fromarray(rand16.astype(">u2")), "TIFF"), ".tiff", _round16(rand16))

    # 32-bit integer holding 16-bit data (how older Pillow and some TIFF writers give 16-bit)
    int32 = rng.integers(0, 65536, (h, w)).astype(np.int32)
    cases["tiff_int32_16bit_values"] = (_save(Image.fromarray(int32), "TIFF"), ".tif", _round16(int32))

    # float: exact 8-bit levels stored as 0..1 and as 0..255 (+ a fraction below one half)
    levels = rng.integers(0, 256, (h, w))
    cases["tiff_float_0_1"] = (_save(Image.fromarray((levels / 255.0).astype(np.float32)), "TIFF"), ".tif", _grey3(levels))
    f255 = (levels + rng.uniform(0.0, 0.45, (h, w))).clip(0, 255).astype(np.float32)
    cases["tiff_float_0_255"] = (_save(Image.fromarray(f255), "TIFF"), ".tif", _grey3(levels))

    # 1-bit, 8-bit grey, palette (with and without transparency), grey+alpha, RGBA
    bits = rng.random((h, w)) > 0.5
    cases["png_1bit"] = (_save(Image.fromarray(bits), "PNG"), ".png", _grey3(bits * 255))
    grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
    cases["png_grey"] = (_save(Image.fromarray(grey), "PNG"), ".png", _grey3(grey))
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    index = rng.integers(0, 16, (h, w), dtype=np.uint8)
    pimg = Image.frombytes("P", (w, h), index.tobytes())
    pimg.putpalette(palette.flatten().tolist())
    cases["png_palette"] = (_save(pimg, "PNG"), ".png", palette[index])
    cases["png_palette_transparent"] = (_save(pimg, "PNG", transparency=bytes([0, 128] + [255] * 14)), ".png", palette[index])
    cases["gif_palette"] = (_save(pimg, "GIF"), ".gif", palette[index])
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    cases["png_grey_alpha"] = (_save(Image.fromarray(np.stack([grey, alpha], -1)), "PNG"), ".png", _grey3(grey))
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    cases["png_rgba"] = (_save(Image.fromarray(np.dstack([rgb, alpha])), "PNG"), ".png", rgb)
    cases["webp_lossless_rgba"] = (_save(Image.fromarray(np.dstack([rgb, alpha])), "WEBP", lossless=True,
                                         exact=True), ".webp", rgb)

    # CMYK (TIFF): Pillow's formula, computed here; (255-C)(255-K)/255 is never exactly halfway
    cmyk = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    c = cmyk.astype(np.float64)
    expected = np.round((255.0 - c[..., :3]) * (255.0 - c[..., 3:]) / 255.0).astype(np.uint8)
    cases["tiff_cmyk"] = (_save(Image.frombytes("CMYK", (w, h), cmyk.tobytes()), "TIFF"), ".tif", expected)

    # multi-frame: the first frame is the picture
    other = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    frames = [Image.fromarray(rgb), Image.fromarray(other)]
    cases["tiff_two_pages"] = (_save(frames[0], "TIFF", save_all=True, append_images=frames[1:]), ".tif", rgb)
    cases["apng_two_frames"] = (_save(frames[0], "PNG", save_all=True, append_images=frames[1:]), ".png", rgb)

    # EXIF orientation (PNG keeps pixels exact): 2 mirror, 3 rotate 180, 6 rotate 90 cw, 8 rotate 90 ccw
    for orientation, expected in ((2, rgb[:, ::-1]), (3, rgb[::-1, ::-1]), (6, np.rot90(rgb, k=-1)), (8, np.rot90(rgb, k=1))):
        exif = Image.Exif()
        exif[0x0112] = orientation
        cases[f"png_exif_orientation_{orientation}"] = (_save(Image.fromarray(rgb), "PNG", exif=exif), ".png",
                                                         np.ascontiguousarray(expected))
    # 16-bit and EXIF together
    exif = Image.Exif()
    exif[0x0112] = 6
    cases["png_16bit_exif_6"] = (_save(Image.fromarray(rand16), "PNG", exif=exif), ".png",
                                 np.ascontiguousarray(np.rot90(_round16(rand16), k=-1)))
    return cases


def jpeg_with_orientation(h: int = 24, w: int = 32, orientation: int = 6) -> tuple[bytes, np.ndarray]:
    """A JPEG whose EXIF says rotate, and the picture it must give: Pillow's decode of its pixels
    (what a JPEG decoder gives; not checked here), turned by numpy."""
    rgb = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _save(Image.fromarray(rgb), "JPEG", exif=exif, quality=95)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    turns = {3: 2, 6: -1, 8: 1}[orientation]
    return data, np.ascontiguousarray(np.rot90(stored, k=turns))


def bad_cases(h: int = 24, w: int = 32) -> dict:
    rng = np.random.default_rng(2)
    big = _save(Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)), "PNG")
    int32 = np.full((h, w), 70000, dtype=np.int32)
    int32[0, 0] = -5
    nan = np.full((h, w), 0.5, dtype=np.float32)
    nan[1, 1] = np.nan
    return {
        "png_truncated": (big[: len(big) // 2], ".png", "truncated or damaged"),
        "empty": (b"", ".png", "empty file"),
        "html_page": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", ".png", "HTML page"),
        "text_file": (b"just some notes\n", ".jpg", "text file"),
        "random_bytes": (bytes(rng.integers(0, 256, 4096, dtype=np.uint8)), ".png", "image format"),
        "tiff_int32_beyond_16bit": (_save(Image.fromarray(int32), "TIFF"), ".tif", "beyond the 16-bit range"),
        "tiff_float_nan": (_save(Image.fromarray(nan), "TIFF"), ".tif", "NaN"),
        "tiff_float_negative": (_save(Image.fromarray(np.full((h, w), -0.25, np.float32)), "TIFF"), ".tif", "from -0.25"),
        "tiff_float_above_255": (_save(Image.fromarray(np.full((h, w), 300.0, np.float32)), "TIFF"), ".tif", "to 300"),
    }
