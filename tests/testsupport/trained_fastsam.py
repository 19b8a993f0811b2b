"""The trained FastSAM test fixture and helpers to measure it (see tests/testmodels/train_fastsam.py).

* ``TRAINED_FASTSAM_PATH``: tests/testmodels/fastsam_shapes.pt, a one-class YOLOv8-seg trained on
  synthetic shapes (``testmodels.shapes``) and saved by ultralytics' trainer, i.e. in the format of
  FastSAM-s.pt / FastSAM-x.pt. ``ultralytics.FastSAM(path)`` loads it and it really segments
  those scenes.
* ``FASTSAM_SETTINGS``: the everything-mode settings its quality is measured with (FastSAM's own
  defaults for ``conf``/``iou``, the fixture's training size for ``imgsz``).
* ``load_trained_fastsam(path)``: an ``ultralytics.FastSAM`` on the fixture.
* ``segment_everything(model, image_rgb, **overrides) -> Results``: one everything-mode run
  (numpy RGB in; ultralytics reads numpy arrays as BGR, so it is flipped here).
* ``select_with_prompts(model, result, bboxes=, points=, labels=) -> bool [K,H,W]``: the masks
  FastSAM's own prompt step (``FastSAMPredictor.prompt``) keeps for those prompts, in image pixels
  (boxes xyxy, points xy, labels 1 = foreground / 0 = background).
* ``result_masks(result) -> bool [N,H,W]``, ``best_ious(pred, gt) -> [N_gt]`` (each true mask's best
  IoU among the predictions), ``recall_at(pred, gt, threshold)``.
* ``xywh_of(box_xyxy_inclusive)``: a scene's inclusive box as the [x, y, w, h] that fal's
  ``box_prompt`` takes.

Stable API for other test files. Needs ``YOLO_OFFLINE=1`` (tests/conftest.py sets it) so
ultralytics never probes the network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TESTMODELS_DIR = Path(__file__).resolve().parents[1] / "testmodels"
TRAINED_FASTSAM_PATH = TESTMODELS_DIR / "fastsam_shapes.pt"

# conf/iou are FastSAM's published defaults (and the Tiny SAM node's); imgsz is the size the
# fixture was trained at (FastSAM's own 1024 would shrink the shapes the model learned by 4x).
FASTSAM_SETTINGS = {"imgsz": 256, "conf": 0.4, "iou": 0.9, "retina_masks": True}


def load_trained_fastsam(path: Path | str = TRAINED_FASTSAM_PATH):
    from ultralytics import FastSAM

    return FastSAM(str(path))


def segment_everything(model, image_rgb: np.ndarray, **overrides):
    """FastSAM everything mode on an RGB uint8 image; returns the ultralytics ``Results``."""
    bgr = np.ascontiguousarray(np.asarray(image_rgb)[..., ::-1])
    settings = {**FASTSAM_SETTINGS, **overrides}
    return model.predict(bgr, device="cpu", verbose=False, **settings)[0]


def result_masks(result) -> np.ndarray:
    """bool [N,H,W] at the image's size (retina masks already are; others are resized)."""
    h, w = result.orig_shape
    if result.masks is None or len(result) == 0:
        return np.zeros((0, h, w), dtype=bool)
    data = result.masks.data
    if tuple(data.shape[-2:]) != (h, w):
        import torch

        data = torch.nn.functional.interpolate(data[None].float(), (h, w), mode="bilinear")[0]
    return (data > 0.5).cpu().numpy()


def select_with_prompts(model, result, bboxes=None, points=None, labels=None) -> np.ndarray:
    """Masks that ultralytics' ``FastSAMPredictor.prompt`` selects from an everything-mode result.

    This is the very step ``FastSAM.predict(..., bboxes=, points=, labels=)`` ends with, applied to
    a result already computed, so many prompts cost one forward pass.
    """
    predictor = model.predictor
    if predictor is None or not hasattr(predictor, "prompt"):
        raise RuntimeError("run segment_everything(model, ...) first: the FastSAM predictor is made by predict")
    selected = predictor.prompt([result], bboxes=bboxes, points=points, labels=labels)[0]
    return result_masks(selected)


def best_ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """For each true mask, its highest IoU with any predicted mask (0 when there are none)."""
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if len(gt) == 0:
        return np.zeros(0)
    if len(pred) == 0:
        return np.zeros(len(gt))
    if pred.shape[1:] != gt.shape[1:]:
        raise ValueError(f"best_ious needs masks of one size, got {pred.shape[1:]} and {gt.shape[1:]}")
    g = gt.reshape(len(gt), -1).astype(np.float32)
    p = pred.reshape(len(pred), -1).astype(np.float32)
    inter = g @ p.T
    union = g.sum(1)[:, None] + p.sum(1)[None, :] - inter
    return (inter / np.maximum(union, 1)).max(1)


def recall_at(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.7) -> float:
    """Fraction of true masks that some prediction matches with IoU >= threshold."""
    ious = best_ious(pred, gt)
    return float((ious >= threshold).mean()) if len(ious) else 1.0


def xywh_of(box_xyxy_inclusive) -> list[int]:
    """[x, y, w, h] of an inclusive pixel box (w counts pixels, so x + w is one past the right edge)."""
    x0, y0, x1, y1 = (int(v) for v in box_xyxy_inclusive)
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]
