"""Everything mode's model interface: what a model family implements so that the segment-everything
driver (``automask.py``, ``automask_crop.py``: prompt selection, crops, stability scores, box NMS,
small-region clean-up, compact outputs) runs on it unchanged.

The driver decides *which* prompts to decode (a point grid, a sparse-then-dense grid, or one box
per detected object) and what happens to the masks afterwards; a backend only turns one crop's
pixels into features and prompts into low-resolution mask logits. The contract, per crop:

1. ``enc = backend.encode(crop_rgb_u8)`` once: the crop's features (``EncodedCrop.state``, the
   family's business) and its geometry (``crop_size``, ``input_size``).
2. Any number of ``backend.decode_points(enc, points, pred_iou_thresh)`` and
   ``backend.decode_boxes(enc, boxes, pred_iou_thresh)`` calls. Both apply the predicted-IoU filter
   *before* any full-size mask exists (``iou > pred_iou_thresh`` when the threshold is above 0, as
   segment-anything's ``SamAutomaticMaskGenerator`` does) and answer :class:`Candidates`.
3. ``backend.upsample(enc, low_res)``: fp32 logits at ``enc.crop_size``, exactly as the family's
   own post-processing makes them (SAM: ``Sam.postprocess_masks``); the driver thresholds them at
   ``backend.mask_threshold`` and reads stability scores off them. The driver calls it with at most
   ``backend.upsample_chunk(enc)`` masks at a time, and also *after* it has dropped the features
   (``enc.released()``): ``upsample`` may read only ``crop_size`` and ``input_size``.

Rules every backend keeps: coordinates are crop pixels (x right, y down; boxes xyxy) given as
float64 numpy arrays on the host (never float64 on the device: MPS has none); results live on
``enc.device``; decoding runs in the caller's precision policy (``precision.for_model``), while
predicted IoU and logits come back float32; results are deterministic (same inputs, same
outputs). Points are decoded with the multimask outputs (several candidates per point, as the
reference generator), boxes with the single-mask output (one object per box, as MobileSAMv2).

Implementations: ``sam_backend.SamBackend`` (segment-anything ``Sam``: SAM vit_b/l/h, MobileSAM,
TinySAM). ``automask.backend_for`` picks the one for a model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@dataclass(frozen=True)
class EncodedCrop:
    """One crop after the image encoder.

    ``crop_size`` (h, w): the crop's pixels; ``input_size`` (h, w): the size the encoder saw it at
    after resizing (what ``upsample`` undoes); ``device``: where features and results live;
    ``state``: the family's own data (features, cached decoder inputs), ``None`` once released.
    """

    crop_size: tuple[int, int]
    input_size: tuple[int, int]
    device: torch.device
    state: Any = None

    def released(self) -> "EncodedCrop":
        """The same crop without its features: enough for ``upsample``, and holds no feature memory."""
        return replace(self, state=None)


@dataclass
class Candidates:
    """Decoded (prompt, output) pairs that passed the predicted-IoU filter, before any full-size mask.

    ``low_res`` float32 ``[M, h', w']`` mask logits at the decoder's resolution; ``iou`` float32
    ``[M]`` predicted IoU; ``prompt_index`` int64 ``[M]``: the row of the prompts array each pair
    came from (a point gives up to one pair per multimask output); ``decoded``: how many pairs
    were decoded before the filter (for ``automask.FilterCounts``). All on ``enc.device``.
    """

    low_res: torch.Tensor
    iou: torch.Tensor
    prompt_index: torch.Tensor
    decoded: int = 0

    def __len__(self) -> int:
        return int(self.iou.shape[0])

    @classmethod
    def cat(cls, parts: list["Candidates"], device) -> "Candidates":
        """Several decoder calls' candidates as one (``prompt_index`` must already be global)."""
        if not parts:
            return cls(torch.zeros((0, 1, 1), device=device), torch.zeros((0,), device=device),
                       torch.zeros((0,), dtype=torch.int64, device=device), 0)
        return cls(torch.cat([p.low_res for p in parts]), torch.cat([p.iou for p in parts]),
                   torch.cat([p.prompt_index for p in parts]), sum(p.decoded for p in parts))


@runtime_checkable
class EverythingBackend(Protocol):
    """What a model family implements for everything mode (see the module docstring for the contract)."""

    #: logits above this are mask pixels (SAM: ``Sam.mask_threshold``, 0.0)
    mask_threshold: float

    def encode(self, crop_rgb: np.ndarray) -> EncodedCrop:
        """Encode one RGB uint8 ``[h, w, 3]`` crop (any size from 1x1)."""
        ...

    def decode_points(self, enc: EncodedCrop, points_xy: np.ndarray, pred_iou_thresh: float) -> Candidates:
        """One foreground point per prompt, float64 ``[N, 2]`` crop pixels; multimask outputs."""
        ...

    def decode_boxes(self, enc: EncodedCrop, boxes_xyxy: np.ndarray, pred_iou_thresh: float) -> Candidates:
        """One box per prompt, float64 ``[N, 4]`` crop pixels (x0, y0, x1, y1); one output per box."""
        ...

    def upsample(self, enc: EncodedCrop, low_res: torch.Tensor) -> torch.Tensor:
        """float32 logits ``[M, h, w]`` at ``enc.crop_size`` from ``low_res`` ``[M, h', w']``."""
        ...

    def upsample_chunk(self, enc: EncodedCrop) -> int:
        """How many masks one ``upsample`` call should take (memory budget of the device)."""
        ...
