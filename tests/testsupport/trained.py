"""The trained SAM test fixture and helpers to measure it (see tests/testmodels/README.md).

* ``TRAINED_SAM_PATH``: tests/testmodels/sam_shapes.pth, a segment-anything state dict of a tiny
  SAM trained on synthetic shapes (``testmodels.shapes``). It really segments those scenes.
* ``trained_sam_config()``: its architecture (a dict; ``build_trained_sam()`` builds and loads it
  with segment-anything's own classes, without the pack's loader).
* ``heldout_scene(i, height=256, width=256)``: the i-th held-out scene (never trained on).
* ``interior_point(mask) -> (x, y)``: the mask pixel farthest from its edge (a click anyone
  would agree is "on" the shape).
* ``mask_iou(a, b)``: intersection over union of two boolean masks (1.0 when both are empty).
* ``neighbour_pairs(scene)``: (k, j) pairs for "click k, exclude j" checks: j touches k where
  some shape does, else the next shape.
* ``RETRAIN_ENV``: the variable that opts in to the slow tests that retrain a fixture;
  ``RETRAIN_TOLERANCE``: how far below each bar a retrained model may land.
* The quality bars the fixture is held to, wherever it runs (segment-anything's predictors in
  test_testmodel_sam.py, the pack's nodes in test_tinysam_trained.py): ``POINT_MEAN_IOU``,
  ``BOX_MEAN_IOU``, ``PER_SHAPE_IOU``, ``SHARE_GOOD``, ``NEGATIVE_MAX_OVERLAP``,
  ``EVERYTHING_MATCH_IOU``, ``EVERYTHING_RECALL``, and ``EVERYTHING_SETTINGS`` for everything mode.

Everything here is stable API for other test files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from testmodels.shapes import HELDOUT_SEEDS, Scene, make_scene

TESTMODELS_DIR = Path(__file__).resolve().parents[1] / "testmodels"
TRAINED_SAM_PATH = TESTMODELS_DIR / "sam_shapes.pth"
RETRAIN_ENV = "SAMKIT_RETRAIN_FIXTURES"
# a retrained model is "of the same quality" within this much of every bar
RETRAIN_TOLERANCE = 0.05

# Quality bars: aggregates over every shape of a check's scenes (about 30-40 shapes), so one odd
# shape cannot flip a result, while a systematic error (wrong coordinates, wrong box format)
# drags the whole aggregate down.
#
# The fixture trained in 14 minutes on 2 CPU cores reaches a mean IoU of about 0.76 for one click
# or one box (the issue asked for 0.85; see tests/testmodels/README.md), while the classic
# transform bugs give 0.12-0.34 on the same scenes. The bars sit between, nearer the honest side.
POINT_MEAN_IOU = 0.70
BOX_MEAN_IOU = 0.70
# at least this share of shapes individually reaches the looser per-shape bar
SHARE_GOOD = 0.80
PER_SHAPE_IOU = 0.50
# negative click on shape j, positive on k: at most this much of j may end up in the mask
NEGATIVE_MAX_OVERLAP = 0.08
# everything mode: this share of the shapes is matched by some segment at IoU >= EVERYTHING_MATCH_IOU
EVERYTHING_RECALL = 0.90
EVERYTHING_MATCH_IOU = 0.70

# "Everything" settings for this 256-px model: a 16×16 grid reaches every shape (smallest is
# about 25 px across); thresholds well below SAM's defaults (0.88 / 0.95) because a tiny model's
# quality estimates are modest and its logits less steep at edges (lower stability scores).
EVERYTHING_SETTINGS = dict(
    points_per_side=16,
    points_per_batch=128,
    pred_iou_thresh=0.50,
    stability_score_thresh=0.70,
    box_nms_thresh=0.7,
    crop_n_layers=0,
    min_mask_region_area=0,
)


def trained_sam_config() -> dict:
    from testmodels.train_sam import SAM_CONFIG

    return dict(SAM_CONFIG)


def build_trained_sam(path: Path | str = TRAINED_SAM_PATH):
    """segment-anything ``Sam`` with the fixture's weights, built directly (no pack code)."""
    import torch

    from testmodels.train_sam import build_sam

    sam = build_sam(trained_sam_config())
    sam.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True), strict=True)
    return sam.eval()


def heldout_scene(i: int, height: int = 256, width: int = 256) -> Scene:
    if not 0 <= i < len(HELDOUT_SEEDS):
        raise IndexError(f"held-out scene index {i} out of range 0..{len(HELDOUT_SEEDS) - 1}")
    return make_scene(HELDOUT_SEEDS[i], height, width)


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel with the largest distance to the nearest non-mask pixel.

    Computed by repeated 4-neighbour erosion (the last pixels to survive are the deepest);
    among those, the one nearest their centroid, so the result is deterministic.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("interior_point needs a non-empty mask")
    current = np.pad(mask, 1)  # outside the image counts as "not mask"
    while True:
        eroded = current.copy()
        eroded[1:-1, 1:-1] &= current[:-2, 1:-1] & current[2:, 1:-1] & current[1:-1, :-2] & current[1:-1, 2:]
        eroded[0, :] = eroded[-1, :] = False
        eroded[:, 0] = eroded[:, -1] = False
        if not eroded.any():
            break
        current = eroded
    ys, xs = np.nonzero(current[1:-1, 1:-1])
    # among the deepest pixels, the one closest to their centroid (a stable "middle")
    cy, cx = ys.mean(), xs.mean()
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return int(xs[i]), int(ys[i])


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask_iou needs masks of one shape, got {a.shape} and {b.shape}")
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


def neighbour_pairs(scene: Scene) -> list[tuple[int, int]]:
    """(k, j) per shape k: the first shape j touching k (4-neighbourhood), else shape k + 1."""
    pairs = []
    for k in range(len(scene)):
        grown = scene.masks[k].copy()
        grown[1:] |= grown[:-1].copy()
        grown[:-1] |= grown[1:].copy()
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        touching = [j for j in range(len(scene)) if j != k and (scene.masks[j] & grown).any()]
        if touching:
            pairs.append((k, touching[0]))
        elif len(scene) > 1:
            pairs.append((k, (k + 1) % len(scene)))
    return pairs
