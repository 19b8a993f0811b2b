"""FastSAM through ultralytics: everything mode, then FastSAM's own prompt selection.

Prompts do not reach a decoder in FastSAM: the model segments every instance once, and
boxes/points then *select* among those masks (box → the mask that best fills it; positive
point → masks containing it; negative point → drop masks containing it). Ultralytics'
``FastSAMPredictor`` implements exactly that, so it is called as is.
"""

from __future__ import annotations

import numpy as np
import torch

from .models import LoadedModel


def _predict(model: LoadedModel, image: np.ndarray, size: int, confidence: float, iou: float, **prompts):
    # ultralytics expects BGR numpy images (OpenCV convention)
    bgr = np.ascontiguousarray(image[..., ::-1])
    results = model.runner.predict(
        bgr,
        imgsz=size,
        conf=confidence,
        iou=iou,
        retina_masks=True,  # masks at the input's resolution
        device=str(model.device),
        verbose=False,
        **({"half": True} if model.dtype == torch.float16 else {}),
        **prompts,
    )
    return results[0]


def _masks_of(result, height: int, width: int) -> torch.Tensor:
    if result.masks is None or len(result) == 0:
        return torch.zeros((0, height, width), dtype=torch.bool)
    masks = result.masks.data > 0.5
    if masks.shape[-2:] != (height, width):  # retina masks are already full size; guard anyway
        masks = torch.nn.functional.interpolate(masks[None].float(), (height, width), mode="nearest")[0] > 0.5
    return masks


def segment_everything(model: LoadedModel, image: np.ndarray, size: int = 1024, confidence: float = 0.4,
                       iou: float = 0.9) -> torch.Tensor:
    """Bool ``[N,H,W]`` instance masks for an RGB uint8 image."""
    h, w = image.shape[:2]
    return _masks_of(_predict(model, image, size, confidence, iou), h, w)


def segment_with_prompts(model: LoadedModel, image: np.ndarray, size: int, confidence: float, iou: float,
                         points: list, labels: list, boxes_xyxy: list) -> torch.Tensor:
    """Masks FastSAM selects for the prompts (all instances when there is no prompt)."""
    h, w = image.shape[:2]
    prompts = {}
    if boxes_xyxy:
        prompts["bboxes"] = [[round(v) for v in b] for b in boxes_xyxy]
    if points:
        prompts["points"] = [[round(x), round(y)] for x, y in points]
        prompts["labels"] = list(labels)
    return _masks_of(_predict(model, image, size, confidence, iou, **prompts), h, w)
