"""The models the pack knows how to fetch: where each comes from, under which licence, and what
the downloaded file must be (its size, checksums and architecture, checked by ``download``).

:data:`KNOWN_MODELS` is in the order the model list shows the missing ones: small and fast
first, the big original SAMs last. This module imports nothing of the pack, so the folder
search, the loader's error messages and the downloader can all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: what a catalogue entry's ``arch`` may be, per ``family`` (the loader's names for them)
ARCHS = {"sam": ("vit_b", "vit_l", "vit_h", "vit_t"), "fastsam": ("fastsam",),
         "sam2": ("sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l")}


@dataclass(frozen=True)
class KnownModel:
    """A model the pack can download, and what the downloaded file must be.

    ``download.download_model`` checks, before the file is moved into place: ``size_bytes``
    (exact), ``git_blob_sha1`` and ``sha256`` when set; always the file's format and every zip
    member's CRC-32, and that the architecture read from the file's contents is ``family`` /
    ``arch``. A sha256 is only filled in where the publisher states one; ``git_blob_sha1`` is
    the object id of the file in the publisher's own git tree (what GitHub serves for a raw URL
    at that commit): sha1 of ``b"blob <size>\\0"`` + the bytes, so it needs ``size_bytes``.

    Raises ``ValueError`` for an inconsistent entry (unknown family or arch, a blob id without
    its size).
    """

    file_name: str
    family: str  # "sam", "sam2" or "fastsam"
    arch: str  # vit_b, vit_l, vit_h, vit_t, fastsam, sam2.1_hiera_t/s/b+/l
    url: str
    licence: str
    description: str
    approx_mb: int  # shown to users; also sizes the progress bar when the server sends no length
    size_bytes: Optional[int] = None
    sha256: Optional[str] = None
    git_blob_sha1: Optional[str] = None
    homepage: str = ""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS.get(self.family, ()):
            raise ValueError(f"catalogue entry {self.file_name}: arch {self.arch!r} is not one of family "
                             f"{self.family!r}'s ({', '.join(ARCHS.get(self.family, ())) or 'unknown family'})")
        if self.git_blob_sha1 is not None and self.size_bytes is None:
            raise ValueError(f"catalogue entry {self.file_name}: a git blob id is computed over the size too; "
                             "set size_bytes")


# Sources (checked 2026-11):
# * SAM: https://github.com/facebookresearch/segment-anything#model-checkpoints links the three
#   dl.fbaipublicfiles.com files; Meta publishes no checksums. The byte sizes are the
#   Content-Length dl.fbaipublicfiles.com serves (e.g. a wget log "Length: 375042383" for vit_b),
#   recorded identically by several independent projects' download manifests.
# * MobileSAM: weights/mobile_sam.pt in https://github.com/ChaoningZhang/MobileSAM, last changed
#   in commit a509aac ("Update for better compability"), git blob 7ef2d090...; the raw URL is
#   pinned to that commit so the blob id stays true. Size: 40.7 MB per the Ultralytics docs
#   (https://docs.ultralytics.com/models/mobile-sam), 40728226 bytes per independent manifests.
# * TinySAM: the README of https://github.com/xinghaochen/TinySAM links release 3.0's
#   tinysam_42.3.pth (a plain state dict of MobileSAM's architecture). No size or checksum is
#   published.
# * FastSAM: Ultralytics hosts FastSAM-s/-x in the ultralytics/assets releases; v8.4.0 is the
#   release ultralytics 8.4 itself downloads them from (the default of
#   ultralytics.utils.downloads.attempt_download_asset). No size or checksum is published, and
#   each assets release may carry a re-saved file, so no size is pinned.
# * SAM 2.1: https://github.com/facebookresearch/sam2#model-description links the four
#   dl.fbaipublicfiles.com/segment_anything_2/092824 files (checkpoints/download_ckpts.sh). Meta
#   publishes no sizes or checksums, and no byte-exact size could be verified from public sources
#   (third-party listings give only rounded sizes: 149 / 176 / 309 / 857 MiB), so no size is pinned;
#   approx_mb is those listings in MB.
# Files without a published size or checksum are still verified: zip CRCs of the whole archive,
# and the architecture read from the downloaded file must be the one listed here.
KNOWN_MODELS: tuple = (
    KnownModel(
        "mobile_sam.pt", "sam", "vit_t",
        "https://raw.githubusercontent.com/ChaoningZhang/MobileSAM/"
        "a509aac54fdd7af59f843135f2f7cee307283c88/weights/mobile_sam.pt",
        "Apache-2.0",
        "MobileSAM: SAM's prompt encoder and mask decoder with a 5M-parameter TinyViT encoder. Fast on CPU.",
        approx_mb=41, size_bytes=40728226,
        git_blob_sha1="7ef2d090979fd9853adf17b7a99c8b94a1c5a6a7",
        homepage="https://github.com/ChaoningZhang/MobileSAM",
    ),
    KnownModel(
        "tinysam_42.3.pth", "sam", "vit_t",
        "https://github.com/xinghaochen/TinySAM/releases/download/3.0/tinysam_42.3.pth",
        "Apache-2.0",
        "TinySAM (release 3.0): a TinyViT SAM distilled further than MobileSAM; same speed, better masks.",
        approx_mb=41, homepage="https://github.com/xinghaochen/TinySAM",
    ),
    KnownModel(
        "FastSAM-s.pt", "fastsam", "fastsam",
        "https://github.com/ultralytics/assets/releases/download/v8.4.0/FastSAM-s.pt",
        "AGPL-3.0",
        "FastSAM small (YOLOv8s-seg, one class): every object in one pass. Fastest everything mode.",
        approx_mb=24, homepage="https://docs.ultralytics.com/models/fast-sam",
    ),
    KnownModel(
        "FastSAM-x.pt", "fastsam", "fastsam",
        "https://github.com/ultralytics/assets/releases/download/v8.4.0/FastSAM-x.pt",
        "AGPL-3.0",
        "FastSAM large (YOLOv8x-seg, one class): better masks than FastSAM-s, still one pass.",
        approx_mb=145, homepage="https://docs.ultralytics.com/models/fast-sam",
    ),
    KnownModel(
        "sam2.1_hiera_tiny.pt", "sam2", "sam2.1_hiera_t",
        "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt",
        "Apache-2.0",
        "SAM 2.1 Hiera tiny (Meta): SAM 2's smallest; prompts and everything mode.",
        approx_mb=156, homepage="https://github.com/facebookresearch/sam2",
    ),
    KnownModel(
        "sam2.1_hiera_small.pt", "sam2", "sam2.1_hiera_s",
        "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_small.pt",
        "Apache-2.0",
        "SAM 2.1 Hiera small (Meta).",
        approx_mb=185, homepage="https://github.com/facebookresearch/sam2",
    ),
    KnownModel(
        "sam2.1_hiera_base_plus.pt", "sam2", "sam2.1_hiera_b+",
        "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_base_plus.pt",
        "Apache-2.0",
        "SAM 2.1 Hiera base+ (Meta).",
        approx_mb=324, homepage="https://github.com/facebookresearch/sam2",
    ),
    KnownModel(
        "sam2.1_hiera_large.pt", "sam2", "sam2.1_hiera_l",
        "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt",
        "Apache-2.0",
        "SAM 2.1 Hiera large (Meta): SAM 2.1's best masks, slowest.",
        approx_mb=899, homepage="https://github.com/facebookresearch/sam2",
    ),
    KnownModel(
        "sam_vit_b_01ec64.pth", "sam", "vit_b",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "Apache-2.0",
        "Segment Anything ViT-B (Meta): the smallest original SAM.",
        approx_mb=375, size_bytes=375042383,
        homepage="https://github.com/facebookresearch/segment-anything",
    ),
    KnownModel(
        "sam_vit_l_0b3195.pth", "sam", "vit_l",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "Apache-2.0",
        "Segment Anything ViT-L (Meta).",
        approx_mb=1250, size_bytes=1249524607,
        homepage="https://github.com/facebookresearch/segment-anything",
    ),
    KnownModel(
        "sam_vit_h_4b8939.pth", "sam", "vit_h",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "Apache-2.0",
        "Segment Anything ViT-H (Meta): the original and largest; best masks, slowest.",
        approx_mb=2565, size_bytes=2564550879,
        homepage="https://github.com/facebookresearch/segment-anything",
    ),
)


def known_model(name: str) -> Optional[KnownModel]:
    """The catalogue entry whose file name is exactly ``name``, or ``None``."""
    for model in KNOWN_MODELS:
        if model.file_name == name:
            return model
    return None
