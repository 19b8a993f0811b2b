"""SAM Segmentation Map node: shapes, batches, odd inputs, determinism, empty results."""

import numpy as np
import pytest
import torch

from comfyui_sam_kit.nodes.seg_map import SamKitSegmentationMap
from comfyui_sam_kit.samkit.loaded_model import LoadedModel
from comfyui_sam_kit.samkit.painting import palette
from testsupport.checkpoints import build_small_sam

# Random weights pass no realistic threshold; these let masks through so the plumbing is exercised.
OPEN = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, min_mask_region_area=0,
            crop_n_layers=0, box_nms_thresh=1.0)


@pytest.fixture(scope="module")
def model():
    sam = build_small_sam(seed=0).eval()
    return LoadedModel("small", "", "sam", "vit_custom", sam, sam, torch.device("cpu"), torch.float32)


def _image(b=1, h=64, w=96, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(b, h, w, c, generator=g) * 0.2
    img[:, h // 4 : h // 2, w // 4 : w // 2, 0] = 0.9
    return img


def _run(model, image, seed=0, **overrides):
    settings = {**OPEN, **overrides}
    return SamKitSegmentationMap().run(model, image, seed=seed, **settings)


def test_outputs_match_the_input_size_and_comfy_types(model):
    seg_map, segments, coverage = _run(model, _image(h=61, w=93))
    assert seg_map.shape == (1, 61, 93, 3) and seg_map.dtype == torch.float32
    assert segments.ndim == 3 and segments.shape[1:] == (61, 93) and segments.shape[0] >= 1
    assert coverage.shape == (1, 61, 93)
    assert seg_map.min() >= 0 and seg_map.max() <= 1
    # the map is exactly the segments painted: colours are palette colours, black where nothing is
    colours = {tuple(c) for c in palette(segments.shape[0], 0).tolist()} | {(0, 0, 0)}
    used = {tuple(c) for c in (seg_map[0] * 255).round().to(torch.int64).reshape(-1, 3).tolist()}
    assert used <= colours
    assert torch.equal(coverage[0] > 0, segments.amax(0) > 0)
    assert torch.equal((seg_map[0].sum(-1) > 0), coverage[0] > 0)


def test_same_input_and_seed_give_the_same_pixels_and_seed_changes_colours(model):
    image = _image()
    a = _run(model, image, seed=5)[0]
    b = _run(model, image, seed=5)[0]
    c = _run(model, image, seed=6)[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(a.sum(-1) > 0, c.sum(-1) > 0)  # same segments, other colours


def test_batch_of_two_is_each_image_on_its_own(model):
    one = _image(seed=1)
    two = _image(seed=2)
    seg_map, segments, coverage = _run(model, torch.cat([one, two]))
    m1, s1, c1 = _run(model, one)
    m2, s2, c2 = _run(model, two)
    assert torch.equal(seg_map, torch.cat([m1, m2]))
    assert torch.equal(segments, torch.cat([s1, s2]))
    assert torch.equal(coverage, torch.cat([c1, c2]))


@pytest.mark.parametrize("channels", [1, 4])
def test_grayscale_and_rgba_inputs(model, channels):
    rgb = _image()
    if channels == 1:
        image = rgb.mean(-1, keepdim=True)
        expected = _run(model, image.expand(-1, -1, -1, 3).contiguous())
    else:
        image = torch.cat([rgb, torch.rand_like(rgb[..., :1])], dim=-1)  # alpha must not matter
        expected = _run(model, rgb)
    got = _run(model, image)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_nothing_passes_gives_black_map_and_empty_masks(model):
    seg_map, segments, coverage = _run(model, _image(b=2, h=33, w=47), pred_iou_thresh=1.0)
    assert seg_map.shape == (2, 33, 47, 3) and not seg_map.any()
    assert segments.shape == (2, 33, 47) and segments.dtype == torch.float32 and not segments.any()
    assert coverage.shape == (2, 33, 47) and not coverage.any()


def test_bad_image_input_is_a_clear_error(model):
    with pytest.raises(ValueError, match="IMAGE"):
        _run(model, torch.zeros(64, 64))


# FastSAM's published everything-mode settings (its README: imgsz 1024, conf 0.4, iou 0.9, retina
# masks); the node has no widgets for them and promises FastSAM's own everything mode with them.
FASTSAM_EVERYTHING = dict(imgsz=1024, conf=0.4, iou=0.9)


def test_fastsam_model_paints_the_masks_ultralytics_finds_for_every_image():
    # The trained FastSAM fixture through the node, against ultralytics.FastSAM run directly on
    # the same file. Held-out scenes 4 and 5 at 200x300: ultralytics finds 20 and 7 instances
    # there (scene 4 has two of equal area, so the tie order is checked too).
    from comfyui_sam_kit.samkit import loader
    from testsupport.trained import heldout_scene
    from testsupport.trained_fastsam import TRAINED_FASTSAM_PATH, load_trained_fastsam, result_masks, segment_everything

    fastsam = loader.load_model(str(TRAINED_FASTSAM_PATH), device="cpu", precision="fp32")
    bare = load_trained_fastsam()
    scenes = [heldout_scene(4, 200, 300), heldout_scene(5, 200, 300)]
    image = torch.cat([torch.from_numpy(scene.image).float()[None] / 255 for scene in scenes])
    seg_map, segments, coverage = SamKitSegmentationMap().run(fastsam, image, seed=0, **OPEN)
    assert seg_map.shape == (2, 200, 300, 3) and coverage.shape == (2, 200, 300)

    start = 0
    for i, scene in enumerate(scenes):
        found = result_masks(segment_everything(bare, scene.image, **FASTSAM_EVERYTHING))
        assert len(found) >= 5, f"image {i}: ultralytics found {len(found)} instances; the comparison needs several"
        # the node's order: largest first, ties in the model's order
        expected = torch.from_numpy(found[np.argsort(-found.reshape(len(found), -1).sum(1), kind="stable")])
        mine = segments[start : start + len(expected)] > 0.5
        start += len(expected)
        assert torch.equal(mine, expected), f"image {i}: segments differ from ultralytics' masks"
        assert torch.equal(coverage[i] > 0, expected.any(0)), f"image {i}"
        assert torch.equal(seg_map[i].sum(-1) > 0, expected.any(0)), f"image {i}: painted pixels are not the segments"
        # the smallest segment is painted last, so all of it shows in its one colour
        colours = {tuple(c) for c in (seg_map[i][expected[-1]] * 255).round().to(torch.int64).tolist()}
        assert len(colours) == 1, f"image {i}: the smallest segment is not one colour"
    assert start == segments.shape[0], "more segments than the two images' instances"
