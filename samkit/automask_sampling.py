"""Which prompts everything mode decodes in a crop, per ``sampling`` mode (``sampling_params.py``
says what each mode is and where it comes from). Model-family free: prompts are crop pixels handed
to ``automask_crop.CropRun``, which decodes them through the family's ``EverythingBackend``.

Object-aware proposals are a function ``crop RGB uint8 [h,w,3] -> float64 [N,4] xyxy boxes in crop
pixels``; :func:`as_proposals` makes one from a FastSAM ``LoadedModel`` (ultralytics' predictor,
boxes after its NMS, no masks made). Each crop asks the proposal model on its own pixels, so crop
layers find smaller objects here as they do with points.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from segment_anything.utils.amg import build_point_grid

from . import precision
from .automask_crop import CropRun
from .sampling_params import (
    CONFIDENT_QUANTILE,
    GRID,
    HIERARCHICAL,
    OBJECT_AWARE,
    PROPOSAL_CONFIDENCE,
    PROPOSAL_IOU,
    PROPOSAL_SIZE,
    RESIDUAL_COVER,
    RESIDUAL_DIVISOR,
    SPARSE_DIVISOR,
    check_sampling,
    missing_proposals,
)

#: crop RGB uint8 ``[h, w, 3]`` -> float64 ``[N, 4]`` xyxy boxes in crop pixels
Proposals = Callable[[np.ndarray], np.ndarray]


def proposal_size(model) -> int:
    """The ``imgsz`` a FastSAM ``LoadedModel`` proposes at: the size its checkpoint was trained at
    (ultralytics keeps it in the checkpoint's ``train_args``, read back as ``overrides["imgsz"]``),
    else :data:`PROPOSAL_SIZE`. Objects then look as large to it as in training (sampling_params)."""
    trained = getattr(getattr(model, "runner", None), "overrides", {}).get("imgsz")
    return int(trained) if isinstance(trained, int) and trained > 0 else PROPOSAL_SIZE


def fastsam_proposals(model, size: Optional[int] = None, confidence: float = PROPOSAL_CONFIDENCE,
                      iou: float = PROPOSAL_IOU) -> Proposals:
    """Object boxes from a FastSAM ``LoadedModel``: ultralytics' predictor at ``imgsz=size`` (``None``:
    :func:`proposal_size`, the model's training size), ``conf=confidence``, NMS at ``iou``, highest confidence first
    (MobileSAMv2's object-aware step)."""
    from .precision import fastsam_half_kwargs

    imgsz = int(size) if size is not None else proposal_size(model)

    def boxes(crop_rgb: np.ndarray) -> np.ndarray:
        bgr = np.ascontiguousarray(crop_rgb[..., ::-1])  # ultralytics reads numpy images as OpenCV BGR
        with precision.for_model(model):  # FastSAM sets its own dtype: autocast off, whatever SAM runs in
            result = model.runner.predict(bgr, imgsz=imgsz, conf=float(confidence), iou=float(iou),
                                          retina_masks=False, device=str(model.device), verbose=False,
                                          **fastsam_half_kwargs(model.dtype))[0]
        if result.boxes is None or len(result.boxes) == 0:
            return np.zeros((0, 4), dtype=np.float64)
        return result.boxes.xyxy.float().cpu().numpy().astype(np.float64)

    return boxes


def as_proposals(proposals) -> Optional[Proposals]:
    """``None``, a proposals function, or a FastSAM ``LoadedModel`` (made into :func:`fastsam_proposals`).

    Raises ValueError for a model that is not FastSAM (SAM models prompt, they do not propose).
    """
    if proposals is None or (callable(proposals) and not hasattr(proposals, "family")):
        return proposals
    if getattr(proposals, "is_fastsam", False):
        return fastsam_proposals(proposals)
    name = getattr(proposals, "name", type(proposals).__name__)
    raise ValueError(f"the proposal model must be a FastSAM model (FastSAM-s.pt / FastSAM-x.pt); got {name}, "
                     f"a {getattr(proposals, 'family', 'non-model')!r} model")


def check(sampling: str, proposals) -> str:
    """Checks before any model work: a known ``sampling``, and proposals when object-aware needs them."""
    check_sampling(sampling)
    if sampling == OBJECT_AWARE and proposals is None:
        raise ValueError(missing_proposals())
    return sampling


def sparse_grid(points_per_side: int) -> np.ndarray:
    """The hierarchical sparse pass's grid (0..1 coordinates): ``points_per_side // 4`` per side, at least 1."""
    return build_point_grid(max(1, points_per_side // SPARSE_DIVISOR))


def residual_grid(points_per_side: int) -> np.ndarray:
    """Object-aware's residual grid (0..1 coordinates): ``points_per_side // RESIDUAL_DIVISOR`` per side, at least 1."""
    return build_point_grid(max(1, points_per_side // RESIDUAL_DIVISOR))


def _uncovered(points: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """The points (crop pixels, inside the crop) that fall on no ``covered`` pixel."""
    h, w = covered.shape
    xs = np.clip(points[:, 0].astype(np.int64), 0, w - 1)
    ys = np.clip(points[:, 1].astype(np.int64), 0, h - 1)
    return points[~covered[ys, xs]]


def planned_batches(sampling: str, n_grid: int, points_per_side: int, points_per_batch: int) -> int:
    """Progress steps one crop takes at most (object-aware's boxes count as one: their number is unknown beforehand)."""
    def batches(n):
        return -(-n // points_per_batch)

    if sampling == GRID:
        return batches(n_grid)
    if sampling == HIERARCHICAL:
        return batches(len(sparse_grid(points_per_side))) + batches(n_grid)
    return 1 + batches(len(residual_grid(points_per_side)))


def sample_crop(run: CropRun, sampling: str, grid: np.ndarray, points_per_side: int,
                proposals: Optional[Proposals]) -> None:
    """Decode one crop's prompts for ``sampling``: ``grid`` is the crop layer's point grid (0..1, x y),
    ``points_per_side`` its side; ``proposals`` is needed for object-aware."""
    h, w = run.crop_size
    scale = np.array([w, h], dtype=np.float64)[None]
    if sampling == GRID:
        run.run(grid * scale)
    elif sampling == HIERARCHICAL:
        covered = run.run(sparse_grid(points_per_side) * scale, confident=CONFIDENT_QUANTILE).cpu().numpy()
        run.run(_uncovered(grid * scale, covered))
    elif sampling == OBJECT_AWARE:
        if proposals is None:
            raise ValueError(missing_proposals())
        boxes = np.asarray(proposals(run.crop_rgb), dtype=np.float64).reshape(-1, 4)
        covered = run.run(boxes, boxes=True, confident=RESIDUAL_COVER).cpu().numpy()
        # the residual pass: objects the proposal model missed, or whose box mask failed the filters
        run.run(_uncovered(residual_grid(points_per_side) * scale, covered))
    else:
        check_sampling(sampling)
