"""Everything mode for segment-anything's ``Sam`` (SAM vit_b/l/h, MobileSAM, TinySAM): the
:class:`~.everything_backend.EverythingBackend` over ``sam_transforms.encode_image`` and
``point_decoder`` (the decoder's image-side work shared by all prompts, predicted IoU before masks).

Prompts go through segment-anything's own ``ResizeLongestSide`` coordinate transforms (float64 on
the host, as ``SamPredictor`` does, then float32 on the device) and ``Sam.prompt_encoder``, and
masks through ``Sam.postprocess_masks``, so a point decodes to the masks
``SamAutomaticMaskGenerator`` makes for it (tests/test_automask.py checks them segment for segment).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .everything_backend import Candidates, EncodedCrop
from .point_decoder import SharedImage, decode_chunk_size, decode_point_tokens, masks_for, share_image, upsample_chunk_size
from .precision import fp32_island
from .sam_transforms import encode_image, sam_resize


@dataclass(frozen=True)
class _SamState:
    features: torch.Tensor  # [1, C, H', W'] image embedding of the crop
    shared: SharedImage | None  # the decoder's per-image inputs, made once for all prompts
    decode_chunk: int  # prompts per decoder call (point_decoder.decode_chunk_size)


class SamBackend:
    """Everything mode on a segment-anything ``Sam``."""

    def __init__(self, sam):
        self.sam = sam
        self.mask_threshold = float(sam.mask_threshold)
        self._resize = sam_resize(sam)  # ResizeLongestSide without 0-pixel sides (thin strips)

    @torch.inference_mode()
    def encode(self, crop_rgb: np.ndarray) -> EncodedCrop:
        embedded = encode_image(self.sam, crop_rgb)
        features = embedded.features
        state = _SamState(features, share_image(self.sam, features), decode_chunk_size(self.sam, features))
        return EncodedCrop(tuple(crop_rgb.shape[:2]), tuple(embedded.input_size), features.device, state)

    @torch.inference_mode()
    def decode_points(self, enc: EncodedCrop, points_xy: np.ndarray, pred_iou_thresh: float) -> Candidates:
        # float32 made on the host: no float64 tensor on the device (MPS has none; precision.py)
        coords = torch.as_tensor(self._resize.apply_coords(np.asarray(points_xy, dtype=np.float64), enc.crop_size),
                                 dtype=torch.float32, device=enc.device)
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=enc.device)
        sparse, _ = self.sam.prompt_encoder(points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None)
        return self._decode(enc, sparse, True, pred_iou_thresh)

    @torch.inference_mode()
    def decode_boxes(self, enc: EncodedCrop, boxes_xyxy: np.ndarray, pred_iou_thresh: float) -> Candidates:
        boxes = torch.as_tensor(self._resize.apply_boxes(np.asarray(boxes_xyxy, dtype=np.float64), enc.crop_size),
                                dtype=torch.float32, device=enc.device)
        sparse, _ = self.sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        return self._decode(enc, sparse, False, pred_iou_thresh)

    def _decode(self, enc: EncodedCrop, sparse: torch.Tensor, multimask: bool, pred_iou_thresh: float) -> Candidates:
        """The decoder on a few prompts at a time (point_decoder.prompts_per_chunk); masks only for survivors."""
        state: _SamState = enc.state
        sparse = sparse.to(state.features.dtype)
        parts = []
        for start in range(0, sparse.shape[0], state.decode_chunk):
            tokens = decode_point_tokens(self.sam, state.features, sparse[start : start + state.decode_chunk],
                                         multimask=multimask, shared=state.shared)
            n_prompts, n_out = tokens.iou_pred.shape
            iou = tokens.iou_pred.flatten().float()
            prompt = torch.arange(n_prompts, device=enc.device).repeat_interleave(n_out)
            output = torch.arange(n_out, device=enc.device).repeat(n_prompts)
            if pred_iou_thresh > 0.0:
                keep = iou > pred_iou_thresh
                iou, prompt, output = iou[keep], prompt[keep], output[keep]
            low_res = masks_for(self.sam, tokens, prompt, output).float()
            parts.append(Candidates(low_res, iou, prompt + start, n_prompts * n_out))
            del tokens
        return Candidates.cat(parts, enc.device)

    def upsample(self, enc: EncodedCrop, low_res: torch.Tensor) -> torch.Tensor:
        """fp32 logits at the crop's size, exactly as ``Sam.postprocess_masks`` (thresholds read them: precision.py)."""
        with fp32_island(low_res.device):
            return self.sam.postprocess_masks(low_res[:, None].float(), enc.input_size, enc.crop_size)[:, 0]

    def upsample_chunk(self, enc: EncodedCrop) -> int:
        return upsample_chunk_size(self.sam, enc.device, *enc.crop_size)
