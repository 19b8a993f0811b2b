"""What a file's first bytes look like, in words, for error messages about files that are not
what their name says (an HTML error page saved as ``mobile_sam.pt``, a text file named ``.png``).

``describe_head(head)`` takes the first few hundred bytes and returns a phrase such as
``"an HTML page"`` or ``None`` when none of the formats below matches. It only reads magic
numbers; it never decides whether a file is usable.
"""

from __future__ import annotations

#: (magic at offset 0, phrase); longest first where one is a prefix of another
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"PK\x03\x04", "a zip archive"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"%PDF", "a PDF document"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras .h5 weights?)"),
    (b"GGUF", "a GGUF file (llama.cpp weights)"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"version https://git-lfs", "a Git LFS pointer (the real file was never downloaded: run `git lfs pull`)"),
)


def describe_head(head: bytes) -> str | None:
    """A phrase for the kind of data ``head`` (a file's first bytes) starts, or ``None``."""
    if not head:
        return "an empty file (0 bytes)"
    for magic, phrase in _MAGIC:
        if head.startswith(magic):
            return phrase
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("ascii", "replace")
        return "a HEIF/AVIF image" if brand[:3] in ("hei", "hev", "mif", "avi", "msf") else "an MP4/QuickTime file"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()  # a BOM and leading blank lines
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text[:512]:
        return "an HTML page (an error page saved instead of the file?)"
    if text.startswith((b"<?xml", b"<svg")):
        return "an XML/SVG document"
    if text.startswith((b"{", b"[")) and _is_text(head):
        return "a JSON text file"
    if _is_text(head):
        return "a text file"
    return None


def _is_text(head: bytes) -> bool:
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the end of the sample is fine
        if exc.start < len(head) - 4:
            return False
        decoded = head[: exc.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\r\n\f" for c in decoded)


def read_head(path, size: int = 512) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)
