"""The one mask+score result type: what a segmentation pass found in one image.

FastSAM's everything pass and its prompt selection (``fastsam.py``) and SAM's prompted objects
and everything mode (``sam_prompted.py``) all answer :class:`Masks`; the Tiny SAM job
(``tiny_sam_job.py``) reads them the same way whichever model ran. The automatic mask
generator's ``automask.Segments`` stays its own type: it carries the reference generator's
other per-mask fields (boxes, prompt points, stability scores, crop boxes) that its fidelity
tests compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .compact import CompactMasks


@dataclass
class Masks:
    """``K`` masks of one image and a score for each, in the producer's order.

    ``masks``: ``[K,H,W]`` on the model's device, bool (FastSAM's everything pass keeps
    ultralytics' 0/1 uint8), or :class:`~.compact.CompactMasks` (bit-packed boxes on the CPU)
    when there are hundreds of them, as in everything mode.
    ``scores``: float ``[K]`` on the model's device: FastSAM's detection confidence or SAM's
    predicted mask IoU.
    """

    masks: torch.Tensor | CompactMasks
    scores: torch.Tensor

    def __len__(self) -> int:
        return len(self.masks)

    def keep(self, index: torch.Tensor) -> "Masks":
        """The masks ``index`` selects (a bool ``[K]`` selection or integer indices, any device), in its order."""
        index = index.to(self.scores.device)
        return Masks(self.masks[index], self.scores[index])

    @classmethod
    def empty(cls, height: int, width: int, device=None, dtype: torch.dtype = torch.bool) -> "Masks":
        """No masks: ``[0,height,width]`` of ``dtype`` and float32 ``[0]`` scores on ``device``."""
        return cls(torch.zeros((0, height, width), dtype=dtype, device=device), torch.zeros((0,), device=device))
