"""Everything mode for SAM 2 / SAM 2.1: the :class:`~.everything_backend.EverythingBackend` over
``sam2_model.Sam2Image`` and its decoder call (``sam2_model.decode_low_res``, what prompts use too).

Each step is ``sam2.SAM2AutomaticMaskGenerator``'s (``sam2/automatic_mask_generator.py``,
``_process_batch``), so the shared driver (``automask``) gives the reference generator's segments:

* the crop is encoded as ``SAM2ImagePredictor.set_image`` does (stretched to 1024×1024);
* grid points (crop pixels, float64 on the host) become float32 tensors first and are then
  normalised by the crop's width and height and scaled to 1024 (``transform_coords(...,
  normalize=True)``), one foreground point per prompt, multimask outputs;
* the predicted-IoU filter (``iou > pred_iou_thresh``) runs on the decoder's sigmoid IoU;
* logits are resized to the crop bilinearly (``postprocess_masks``), in fp32.

Boxes (for the driver's box-prompted sampling) are two points labelled 2 and 3 with the
single-mask output, as ``SAM2ImagePredictor`` prompts a box.

Unlike SAM's backend, the decoder's image side is not shared between prompts here: SAM 2's decoder
mixes the image's high-resolution features into every prompt's upscaling, and the reference's own
batched decoder call (``repeat_image``) is what runs, a few prompts at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .automask_settings import AutoMaskSettings
from .everything_backend import Candidates, EncodedCrop
from .point_decoder import prompts_per_chunk
from .precision import fp32_island
from .sam2_model import Sam2Embedding, Sam2Image, decode_low_res, to_encoder_frame


#: ``SAM2AutomaticMaskGenerator``'s defaults (SAM 2 lowered ``pred_iou_thresh`` from SAM's 0.88 to 0.8)
SAM2_DEFAULTS = AutoMaskSettings(pred_iou_thresh=0.8)


#: Prompts per decoder call at least. The 8 MiB CPU budget of ``point_decoder`` would give one
#: prompt per call (SAM 2's decoder holds ~12 MiB per prompt); measured on 64 grid points
#: (hiera-tiny, 2 busy cores): one per call ~125 s, 16 per call ~45 s; 16 prompts hold ~0.5 GiB.
MIN_DECODE_CHUNK = 16


@dataclass(frozen=True)
class _Sam2State:
    embedding: Sam2Embedding
    decode_chunk: int  # prompts per decoder call


class Sam2Backend:
    """Everything mode on a SAM 2 / SAM 2.1 ``Sam2Image``."""

    def __init__(self, net: Sam2Image):
        self.net = net
        self.mask_threshold = float(net.mask_threshold)

    @torch.inference_mode()
    def encode(self, crop_rgb: np.ndarray) -> EncodedCrop:
        embedding = self.net.encode_image(crop_rgb)
        device = embedding.features.device
        # per prompt, the decoder holds the repeated embedding and its 32×256² upscaled features
        per_prompt = embedding.features.element_size() * (embedding.features[0].numel() + 32 * 256 * 256)
        state = _Sam2State(embedding, max(MIN_DECODE_CHUNK, prompts_per_chunk(device, per_prompt)))
        return EncodedCrop(tuple(crop_rgb.shape[:2]), tuple(embedding.input_size), device, state)

    @torch.inference_mode()
    def decode_points(self, enc: EncodedCrop, points_xy: np.ndarray, pred_iou_thresh: float) -> Candidates:
        # float32 made on the host from float64 (as the reference's torch.as_tensor): none on the device
        points = torch.as_tensor(np.asarray(points_xy, dtype=np.float64), dtype=torch.float32).to(enc.device)
        coords = to_encoder_frame(points, enc.crop_size, self.net.image_size)[:, None, :]
        labels = torch.ones((coords.shape[0], 1), dtype=torch.int, device=enc.device)
        return self._decode(enc, coords, labels, True, pred_iou_thresh)

    @torch.inference_mode()
    def decode_boxes(self, enc: EncodedCrop, boxes_xyxy: np.ndarray, pred_iou_thresh: float) -> Candidates:
        boxes = torch.as_tensor(np.asarray(boxes_xyxy, dtype=np.float64), dtype=torch.float32).to(enc.device)
        coords = to_encoder_frame(boxes.reshape(-1, 2, 2), enc.crop_size, self.net.image_size)
        labels = torch.tensor([[2, 3]], dtype=torch.int, device=enc.device).repeat(coords.shape[0], 1)
        return self._decode(enc, coords, labels, False, pred_iou_thresh)

    def _decode(self, enc: EncodedCrop, coords: torch.Tensor, labels: torch.Tensor, multimask: bool,
                pred_iou_thresh: float) -> Candidates:
        state: _Sam2State = enc.state
        parts = []
        for start in range(0, coords.shape[0], state.decode_chunk):
            stop = start + state.decode_chunk
            low_res, iou = decode_low_res(self.net, state.embedding, coords[start:stop], labels[start:stop], multimask)
            n_prompts, n_out = iou.shape
            iou = iou.flatten().float()
            prompt = torch.arange(n_prompts, device=enc.device).repeat_interleave(n_out)
            low_res = low_res.flatten(0, 1)
            if pred_iou_thresh > 0.0:
                keep = iou > pred_iou_thresh
                iou, prompt, low_res = iou[keep], prompt[keep], low_res[keep]
            parts.append(Candidates(low_res.float(), iou, prompt + start, n_prompts * n_out))
        return Candidates.cat(parts, enc.device)

    def upsample(self, enc: EncodedCrop, low_res: torch.Tensor) -> torch.Tensor:
        """fp32 logits at the crop's size (``SAM2Transforms.postprocess_masks``; thresholds read them)."""
        with fp32_island(low_res.device):
            return self.net.upsample_logits(low_res, enc.crop_size)

    def upsample_chunk(self, enc: EncodedCrop) -> int:
        h, w = enc.crop_size
        return prompts_per_chunk(enc.device, 4 * max(256 * 256, h * w))
