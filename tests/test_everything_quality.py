"""Everything mode judged on ground truth (issue 16), not on agreement with the grid.

The trained SAM fixture segments held-out shape scenes whose exact shape masks are known
(``testsupport/ground_truth.py``: scenes, metrics). Each way of segmenting everything must find the
shapes: recall at IoU >= 0.7 and the mean IoU of the found shapes stay above bars measured here,
and two runs give the same segments. segment-anything's ``SamAutomaticMaskGenerator`` on the same
checkpoint and settings is measured alongside, as the yardstick. ``python -m bench.quality`` prints
the same table on more and larger scenes.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from comfyui_sam_kit.samkit import loader
from comfyui_sam_kit.samkit.automask import AutoMaskSettings
from comfyui_sam_kit.samkit.segmap import segmentation_map
from testsupport import ground_truth as gt
from testsupport.trained import EVERYTHING_SETTINGS, TRAINED_SAM_PATH
from testsupport.trained_fastsam import TRAINED_FASTSAM_PATH

# The fixture tests' everything settings (16x16 points reach every shape at this size; thresholds
# for a tiny model: tests/testsupport/trained.py).
SETTINGS = AutoMaskSettings(**EVERYTHING_SETTINGS)

#: each way of segmenting everything: the seg map's extra arguments (a function, so a mode that
#: needs a second model loads it only when it runs). Every mode but the grid is held to the grid's
#: recall too. Object-aware takes its boxes from the trained FastSAM fixture, as the node does
#: (a FastSAM LoadedModel: it proposes at the size it was trained at, 256).
MODES = {
    "grid": lambda: {"sampling": "grid"},
    "hierarchical": lambda: {"sampling": "hierarchical"},
    "object-aware": lambda: {"sampling": "object-aware", "proposals": _fastsam()},
}

# Measured on QUALITY_SCENES (8 held-out scenes, 45 shapes) with these settings (torch 2.14.1, CPU):
# the grid finds 35/45 shapes (recall 0.778), mean IoU of the found ones 0.871 (0.766 over all
# shapes); SamAutomaticMaskGenerator gives the same segments, so the same figures. The misses are
# the fixture's (a 3-block ViT trained 14 minutes, tests/testmodels/README.md): shapes merged with a
# touching neighbour or cut in two, mostly in the two crowded eight-shape scenes (11/16 there,
# 24/29 in the others). Shapes near the 0.7 line (0.69 and 0.71 seen) can cross it with another
# CPU's float rounding, so the recall bar leaves two shapes of slack (33/45 = 0.733); a third lost
# shape, or lost prompts, fails it.
RECALL_BAR = 0.73
# Mean IoU of the found shapes: 0.871 measured. Every mask eroded by one pixel gives 0.856, every
# mask shifted two pixels 0.857: both fail. A shape crossing the 0.7 line moves it by about 0.005;
# two such fit.
MEAN_IOU_BAR = 0.86
# issue 16's goal for the sampling modes: within 0.02 of the grid's recall (on 45 shapes: none lost)
MODE_RECALL_SLACK = 0.02


@functools.lru_cache(maxsize=1)
def _fastsam():
    return loader.load_model(str(TRAINED_FASTSAM_PATH), device="cpu", precision="fp32")


def _seg_map(model, **options) -> gt.Segmenter:
    def run(image: np.ndarray) -> torch.Tensor:
        return segmentation_map(model, torch.from_numpy(image).float()[None] / 255.0, SETTINGS, **options).segments

    return run


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # One torch thread here: the pack's everything mode is many small operations, and on a loaded
    # 2-core machine two OpenMP threads keep waiting on each other (this module measured 472 s with
    # two threads at load average 7; 136 s with one at load average 11, of which 24 s CPU time).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return loader.load_model(str(TRAINED_SAM_PATH), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def scenes():
    return gt.quality_scenes(gt.QUALITY_SCENES)


@pytest.fixture(scope="module")
def measured(model, scenes) -> dict:
    """Quality of each mode and of the reference, measured once for the module's tests."""
    rows = {name: gt.measure(_seg_map(model, **options()), scenes, name) for name, options in MODES.items()}
    rows["reference"] = gt.measure(gt.reference_segmenter(model.runner, **SETTINGS.reference_kwargs()), scenes,
                                   "SamAutomaticMaskGenerator")
    print("\n" + gt.table(list(rows.values())))
    return rows


def test_the_scenes_are_held_out_and_as_described(scenes):
    # never a training scene of the fixtures, and the 45 shapes the bars were measured on
    from testmodels.shapes import HELDOUT_SEEDS, TRAIN_SEEDS

    seeds = [HELDOUT_SEEDS[gt.QUALITY_SEED_OFFSET + s.index] for s in gt.QUALITY_SCENES]
    assert not any(seed in TRAIN_SEEDS for seed in seeds)
    assert sum(len(s) for s in scenes) == 45


def test_metrics_on_known_answers(scenes):
    scene = scenes[0]
    exact = gt.measure(lambda image: scene.masks, [scene])
    assert (exact.recall, exact.mean_iou) == (1.0, 1.0)
    # each shape moved right by half its width: every IoU falls below 0.7, nothing is found
    shifted = np.stack([np.roll(m, max(2, (b[2] - b[0]) // 2), axis=1) for m, b in zip(scene.masks, scene.boxes_xyxy)])
    moved = gt.measure(lambda image: shifted, [scene])
    assert moved.found == 0 and 0.0 < moved.mean_best_iou < 0.7
    assert gt.measure(lambda image: [], [scene]).recall == 0.0
    with pytest.raises(ValueError, match="must return"):
        gt.measure(lambda image: scene.masks[:, :-1], [scene])


#: modes held to the grid's recall (issue 16's goal) in the test below; object-aware's shortfall is
#: its own strict xfail, test_object_aware_reaches_the_grid_recall
GRID_RECALL_MODES = [m for m in MODES if m != "object-aware"]


@pytest.mark.parametrize("mode", list(MODES))
def test_mode_finds_the_ground_truth_shapes(mode, measured):
    q, reference, grid = measured[mode], measured["reference"], measured["grid"]
    summary = f"{mode}: {q.found}/{q.shapes} shapes, recall {q.recall:.3f}, mean IoU {q.mean_iou:.3f}"
    assert q.recall >= RECALL_BAR, summary
    assert q.mean_iou >= MEAN_IOU_BAR, summary
    if mode == "grid":
        # the grid is the reference's algorithm: the same shapes found, as tightly
        assert q.found == reference.found and abs(q.mean_iou - reference.mean_iou) < 1e-3, (
            f"{summary}; reference {reference.found}/{reference.shapes}, mean IoU {reference.mean_iou:.3f}")
    elif mode in GRID_RECALL_MODES:
        assert q.recall >= grid.recall - MODE_RECALL_SLACK, f"{summary}; grid recall {grid.recall:.3f}"


# Object-aware's own floor until it reaches the grid's: measured 33/45 (recall 0.733, mean IoU 0.872;
# the grid 35/45) with the FastSAM fixture's boxes and the residual pass (sampling_params). The two
# shapes it misses: one whose proposal box is poor (box IoU 0.61) and whose true box gives a mask
# that fails stability (0.66), one the FastSAM fixture boxes badly (0.41) and no residual point
# reaches. RECALL_BAR (33/45) above holds it with no shape of slack, but none is near the line (the
# found shape nearest it at IoU 0.721, the nearest miss 0.659); boxes alone found 19/45, so losing the
# residual pass fails.
@pytest.mark.xfail(strict=True, reason="object-aware finds 33/45 shapes where the grid finds 35 (README, "
                   "'Everything mode: sampling'): the fixture SAM's box-prompt masks and the FastSAM fixture's "
                   "boxes; strict, so reaching the grid's recall fails here until this mark is removed")
def test_object_aware_reaches_the_grid_recall(measured):
    q, grid = measured["object-aware"], measured["grid"]
    assert q.recall >= grid.recall - MODE_RECALL_SLACK, f"{q.found}/{q.shapes}; grid {grid.found}/{grid.shapes}"


def test_reference_meets_the_same_bars(measured):
    reference = measured["reference"]
    assert reference.recall >= RECALL_BAR and reference.mean_iou >= MEAN_IOU_BAR, (
        f"{reference.found}/{reference.shapes}, mean IoU {reference.mean_iou:.3f}")


@pytest.mark.parametrize("mode", list(MODES))
def test_mode_is_deterministic(mode, model, scenes):
    image = torch.from_numpy(scenes[0].image).float()[None] / 255.0
    options = MODES[mode]()
    first = segmentation_map(model, image, SETTINGS, **options)
    second = segmentation_map(model, image, SETTINGS, **options)
    assert first.counts == second.counts and first.counts[0] > 0
    assert torch.equal(first.segments, second.segments)
    assert torch.equal(first.seg_map, second.seg_map)
