"""Per-object outputs of a batch follow one rule: which masks belong to which image.

The rule (README "Batches", ``samkit/outputs.py``): image after image, each image contributes its
objects in order, and an image with none contributes exactly one empty mask; Tiny SAM's ``boxes``
has one list per image, ``[]`` for an image with none. Checked on the seg map's ``segments`` and
Tiny SAM's ``object_masks`` with the trained SAM and FastSAM fixtures, on batches that mix
images where nothing is found (E) with held-out scenes (S): empty first, empty last, several
empties, all empty. Each batch is compared with the same images run one at a time, and every
mask must lie on its own image's scene: it matches one of that scene's regions (its shapes or
its background) better than any region of the other scenes in the batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_sam_kit.nodes.seg_map import SamKitSegmentationMap
from comfyui_sam_kit.nodes.tiny_sam import SamKitTinySAM
from comfyui_sam_kit.samkit import loader
from testsupport.trained import TRAINED_SAM_PATH, heldout_scene, mask_iou
from testsupport.trained_fastsam import TRAINED_FASTSAM_PATH, xywh_of

SIZE = 256
GREY = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)

# Which images are empty for each job, measured on the fixtures (counts of objects found):
# * SAM seg map at stability 0.95: the fixture segments a flat image as one whole-frame segment,
#   so "nothing found" comes from scenes none of whose masks is that stable: held-out scenes 22,
#   26 and 37 give 0; 20 and 38 give 1 each (their background).
# * FastSAM seg map (FastSAM's own size 1024, confidence 0.4): the grey image gives 0; scenes 40,
#   41 give 8 and 15.
# * Tiny SAM, FastSAM everything mode at the fixture's size 256, confidence 0.25: grey 0; scenes
#   20, 21 give 11 and 8.
# * Tiny SAM, SAM: one box per shape on scenes (4 objects each for 20, 21); a grey image with only
#   a background point drops the one whole-frame segment, so it gives 0.
JOBS = {
    "segmap-sam": dict(empty=[22, 26, 37], full=[20, 38]),
    "segmap-fastsam": dict(empty=["grey", "grey", "grey"], full=[40, 41]),
    "tinysam-fastsam": dict(empty=["grey", "grey", "grey"], full=[20, 21]),
    "tinysam-sam": dict(empty=["grey", "grey", "grey"], full=[20, 21]),
}
# E = an empty image, S = a scene with objects
LAYOUTS = ["ESEES", "SE", "EE"]  # empty first and several empties; empty last; all empty


@pytest.fixture(scope="module")
def models():
    return {"sam": loader.load_model(str(TRAINED_SAM_PATH), device="cpu", precision="fp32"),
            "fastsam": loader.load_model(str(TRAINED_FASTSAM_PATH), device="cpu", precision="fp32")}


def _image(which) -> tuple[np.ndarray, list[np.ndarray]]:
    """(RGB uint8 image, its regions: each shape's mask and the background)."""
    if which == "grey":
        return GREY, [np.ones((SIZE, SIZE), dtype=bool)]
    scene = heldout_scene(which, SIZE, SIZE)
    return scene.image, list(scene.masks) + [~scene.masks.any(0)]


def _batch(job: str, layout: str) -> list:
    spec, used = JOBS[job], {"E": 0, "S": 0}
    picked = []
    for kind in layout:
        pool = spec["empty"] if kind == "E" else spec["full"]
        picked.append(pool[used[kind] % len(pool)])
        used[kind] += 1
    return picked


def _boxes_prompt(which) -> list:
    if which == "grey":
        return []
    scene = heldout_scene(which, SIZE, SIZE)
    return [dict(zip(("x", "y", "width", "height"), xywh_of(box))) for box in scene.boxes_xyxy]


def _run(job: str, models: dict, images: list):
    """(masks [N,H,W], boxes per image or None) from the node, for the images ``images`` (ids)."""
    tensor = torch.from_numpy(np.stack([_image(i)[0] for i in images])).float() / 255.0
    if job.startswith("segmap"):
        model = models[job.split("-")[1]]
        _, segments, _ = SamKitSegmentationMap().run(
            model, tensor, points_per_side=16, pred_iou_thresh=0.5, stability_score_thresh=0.95,
            min_mask_region_area=0, crop_n_layers=0, seed=0)
        return segments, None
    widgets = dict(size=SIZE, confidence=0.25, iou=0.9, box_prompt="[[0,0,0,0]]", point_prompt="[[0,0]]",
                   point_label="[0]")
    if job == "tinysam-sam":
        # per image: the scenes' shapes boxed; on grey images one background point and no box
        widgets.update(confidence=0.0, point_label=str([[0]] * len(images)),
                       point_prompt=str([[[128, 128]] if i == "grey" else [[0, 0]] for i in images]))
        _, _, objects, boxes = SamKitTinySAM().run(models["sam"], tensor, bboxes=[_boxes_prompt(i) for i in images],
                                                   **widgets)
    else:
        _, _, objects, boxes = SamKitTinySAM().run(models["fastsam"], tensor, **widgets)
    return objects, boxes


_SINGLES: dict = {}


def _single(job: str, models: dict, image):
    """The image run on its own (cached: the layouts reuse the same images)."""
    if (job, image) not in _SINGLES:
        _SINGLES[job, image] = _run(job, models, [image])
    return _SINGLES[job, image]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("job", list(JOBS))
def test_each_image_contributes_its_objects_or_one_empty_mask(job, layout, models):
    images = _batch(job, layout)
    masks, boxes = _run(job, models, images)
    singles = {i: _single(job, models, i) for i in dict.fromkeys(images)}
    counts = [int((singles[i][0].flatten(1).amax(1) > 0).sum()) for i in images]
    assert all((c == 0) == (kind == "E") for c, kind in zip(counts, layout)), f"fixture counts moved: {counts}"

    # the rule: max(count, 1) rows per image, in batch order, each image's rows its own run's
    rows = np.cumsum([0] + [max(c, 1) for c in counts])
    assert masks.shape == (rows[-1], SIZE, SIZE)
    for k, which in enumerate(images):
        own = masks[rows[k] : rows[k + 1]]
        assert torch.equal(own, singles[which][0]), f"image {k}: its masks differ from running it alone"
        if counts[k] == 0:
            assert own.shape[0] == 1 and not own.any()
        if boxes is not None:
            assert len(boxes) == len(images) and len(boxes[k]) == counts[k]
            for box, mask in zip(boxes[k], own):  # each box is its own mask's box
                ys, xs = np.nonzero(mask.numpy() > 0.5)
                assert [box["x"], box["y"], box["width"], box["height"]] == [
                    xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]

    # every mask lies on its own image's scene, not on another image's
    scenes = {i: _image(i)[1] for i in images if i != "grey"}
    for k, which in enumerate(images):
        for mask in masks[rows[k] : rows[k] + counts[k]]:
            m = mask.numpy() > 0.5
            assert m.any(), f"image {k}: an object mask is empty"
            own = max(mask_iou(m, region) for region in scenes[which])
            others = [max(mask_iou(m, region) for region in regions) for i, regions in scenes.items() if i != which]
            assert own > max(others, default=0.0), f"image {k}: a mask matches another image (IoU {own:.2f} vs {others})"
