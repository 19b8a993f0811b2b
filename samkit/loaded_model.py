"""The in-memory form of a loaded model, shared by every operator in the pack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

#: families the operators dispatch on
SAM_FAMILY = "sam"  # segment-anything ``Sam`` (vit_b / vit_l / vit_h / vit_t / smaller custom ViTs)
FASTSAM_FAMILY = "fastsam"  # ultralytics YOLO-seg in FastSAM's format
SAM2_FAMILY = "sam2"  # SAM 2 / SAM 2.1 (Hiera), image path only (``sam2_model.Sam2Image``)


@dataclass(eq=False)
class LoadedModel:
    """A model ready to run.

    ``module`` is the torch module that holds the weights (a ``segment_anything.modeling.Sam``
    for the SAM family, a ``sam2_model.Sam2Image`` for SAM 2, the ultralytics
    ``SegmentationModel`` for FastSAM). ``runner`` is what the operators call: the ``Sam`` or
    ``Sam2Image`` itself, or the ``ultralytics.FastSAM`` wrapper.
    """

    name: str
    path: str
    family: str
    arch: str
    module: torch.nn.Module
    runner: Any
    device: torch.device
    dtype: torch.dtype
    #: identity used by caches (path, size, mtime, device, dtype)
    key: tuple = field(default=())

    @property
    def is_sam(self) -> bool:
        return self.family == SAM_FAMILY

    @property
    def is_sam2(self) -> bool:
        return self.family == SAM2_FAMILY

    @property
    def samples_prompts(self) -> bool:
        """Everything mode runs the pack's driver (``automask``) on this model, so ``sampling`` and
        object-aware proposals apply: SAM and SAM 2 / 2.1. FastSAM has its own everything pass."""
        return self.is_sam or self.is_sam2

    @property
    def is_fastsam(self) -> bool:
        return self.family == FASTSAM_FAMILY

    def __repr__(self) -> str:
        return f"LoadedModel({self.name!r}, {self.family}/{self.arch}, {self.device}, {self.dtype})"
