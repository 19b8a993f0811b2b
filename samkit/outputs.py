"""Per-object outputs of a batch: one layout rule, and a size check before anything large is made.

**The rule** (seg map ``segments``, Tiny SAM ``object_masks``): image after image, each image
contributes its masks in order, and an image with none contributes exactly one empty mask. So a
batch of B images gives at least B masks, and image i's masks are the next
``max(count_i, 1)`` after those of images 0..i-1 (:func:`mask_rows`).

**The size check**: float32 outputs of hundreds of full-size masks are large (568 segments of a
4096×3072 image are 28.6 GB). Before allocating, a job compares the bytes the
outputs need, plus a bounded working set, with what the output device has free
(:func:`free_if_short`, from ``runtime.available_memory``); when they do not fit, the job raises
:class:`OutputTooLarge` with the numbers and what to change, instead of letting the allocation
thrash or be killed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from . import runtime

#: Working memory beside the outputs while they are filled, in bytes per image pixel: an int32
#: label map (4), its colour lookup as int64 indices (8) and uint8 RGB (3), one unpacked mask (1).
WORKING_BYTES_PER_PIXEL = 16


class OutputTooLarge(RuntimeError):
    """The outputs would not fit in the free memory of their device; the message says what to change."""


def mask_rows(counts: Sequence[int]) -> list[int]:
    """First row of each image's masks in the batch's mask output (the rule above); the last item is the total."""
    rows = [0]
    for count in counts:
        rows.append(rows[-1] + max(int(count), 1))
    return rows


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def free_if_short(needed: int, device: torch.device) -> int | None:
    """The free bytes of ``device`` when ``needed`` bytes do not fit there, else None.

    Free memory comes from ``runtime.available_memory`` (a host may make room first); unknown
    free memory counts as enough.
    """
    free = runtime.available_memory(device, needed)
    return None if free is None or needed <= free else free


def float_mask_bytes(count: int, height: int, width: int) -> int:
    """Bytes of a float32 MASK ``[count,H,W]``."""
    return 4 * int(count) * int(height) * int(width)


@dataclass(frozen=True)
class BatchOutputs:
    """What a job outputs for a batch: a per-object float32 MASK plus ``image_floats`` floats per pixel per image."""

    job: str  # "SAM Segmentation Map"
    noun: str  # "segments"
    mask_output: str  # "segments"
    other_outputs: str  # "seg_map and coverage"
    image_floats: int  # 4: an RGB map and a mask per image

    def bytes_needed(self, counts: Sequence[int], height: int, width: int, with_masks: bool = True) -> int:
        """Bytes of the outputs for images with ``counts`` objects, plus the working set that fills them."""
        total = float_mask_bytes(self.image_floats * len(counts), height, width) + WORKING_BYTES_PER_PIXEL * height * width
        return total + (float_mask_bytes(mask_rows(counts)[-1], height, width) if with_masks else 0)

    def ensure_fits(self, counts: Sequence[int], pending: int, height: int, width: int, device: torch.device,
                    remedies: Callable[[int], list[str]], with_masks: bool = True) -> None:
        """Raise :class:`OutputTooLarge` if the outputs will not fit in ``device``'s free memory.

        ``counts``: objects of the images segmented so far; ``pending`` more images count as one
        object each (the least they can add). ``remedies(free_bytes)`` lists what the user can change.
        """
        counts = [int(c) for c in counts] + [1] * int(pending)
        needed = self.bytes_needed(counts, height, width, with_masks)
        free = free_if_short(needed, device)
        if free is None:
            return
        rows = mask_rows(counts)[-1]
        others = f"{self.other_outputs} ({gigabytes(float_mask_bytes(self.image_floats * len(counts), height, width))})"
        masks = f"{rows}×{height}×{width} float32 {self.mask_output} output ({gigabytes(float_mask_bytes(rows, height, width))})"
        if not with_masks:
            what = f"{self.job}: {others} for {len(counts)} image(s) of {width}×{height}"
        elif pending == len(counts):  # nothing segmented yet: the least the outputs can be
            what = f"{self.job}: {len(counts)} image(s) of {width}×{height} need {others} and at least a {masks}"
        else:
            what = (f"{self.job}: {sum(counts)} {self.noun} in {len(counts)} image(s) of {width}×{height} make a "
                    f"{masks} beside {others}")
            if pending:
                what += f", counting the {pending} image(s) not segmented yet as one each"
        raise OutputTooLarge(f"{what}; with working memory that needs {gigabytes(needed)}, but only "
                             f"{gigabytes(free)} is free on {torch.device(device).type}. To fix: "
                             f"{'; or '.join(remedies(free))}.")
