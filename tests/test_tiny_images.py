"""Images of every size from 1x1 up: masks at the input's size with SAM-family models and FastSAM.

segment-anything's ResizeLongestSide rounds the short side of a thin strip to 0 pixels (1x640 at
the fixture's 256 px encoder, 1x3000 at SAM's 1024) and Pillow then refuses to resize; crop
layers place empty crops past the edge of images a pixel or two wide. The pack resizes with
``sam_transforms.SamResize`` (the same shapes wherever the reference has no 0 side) and skips
empty crops. Where the reference works, results are unchanged (test_automask, test_tinysam*);
on strips the pack is compared with segment-anything's own predictor and generator given the
same resize.
"""

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.utils.transforms import ResizeLongestSide

from comfyui_sam_kit.samkit import loader
from comfyui_sam_kit.samkit.automask import AutoMaskSettings, generate_segments
from comfyui_sam_kit.samkit.embedding_cache import EmbeddingCache
from comfyui_sam_kit.samkit.images import from_uint8_rgb
from comfyui_sam_kit.samkit.prompts import ImagePrompts
from comfyui_sam_kit.samkit.sam_prompted import segment_prompted
from comfyui_sam_kit.samkit.sam_transforms import SamResize
from comfyui_sam_kit.samkit.segmap import segmentation_map
from comfyui_sam_kit.samkit.tiny_sam_job import TinySamRequest, segment_with_prompts
from testsupport.fal_server import small_model
from testsupport.trained import TRAINED_SAM_PATH, build_trained_sam
from testsupport.trained_fastsam import TRAINED_FASTSAM_PATH

SIZES = [(1, 1), (2, 2), (1, 2), (2, 1), (1, 640), (640, 1), (3, 5000), (5000, 3), (1, 3000), (7, 13)]


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[: max(h // 2, 1), : max(w // 3, 1)] = (230, 40, 40)  # a block of one colour to find
    return img


def test_resize_is_segment_anythings_wherever_that_has_no_zero_side():
    sizes = [(h, w) for h in range(1, 301) for w in range(1, 301)]
    sizes += [(h, w) for h in (1, 2, 3, 5, 511, 1024, 1500, 4999) for w in (1000, 2047, 2048, 2049, 3000, 5000, 12000)]
    zero_sides = 0
    for target in (256, 1024):
        ours, ref = SamResize(target), ResizeLongestSide(target)
        for h, w in sizes + [(w, h) for h, w in sizes]:
            expected = ref.get_preprocess_shape(h, w, target)
            got = ours.get_preprocess_shape(h, w, target)
            if min(expected) > 0:
                assert got == expected, (h, w, target)
            else:
                zero_sides += 1
                assert got == tuple(max(s, 1) for s in expected) and max(got) == target, (h, w, target)
    assert zero_sides == 60  # the sweep reaches the sizes the reference gets wrong (counted: 60 of them)
    assert ResizeLongestSide.get_preprocess_shape(1, 640, 256) == (0, 256)  # the reported strip
    assert SamResize.get_preprocess_shape(1, 640, 256) == (1, 256)
    assert SamResize.get_preprocess_shape(12000, 3, 1024) == (1024, 1)
    coords = np.array([[[0.0, 0.0], [13.5, 2.0], [639.0, 0.0]]])
    for size in [(480, 640), (3, 640), (100, 7)]:
        assert np.array_equal(SamResize(1024).apply_coords(coords, size), ResizeLongestSide(1024).apply_coords(coords, size))
    assert SamResize(256).apply_image(_image(1, 640)).shape == (1, 256, 3)


@pytest.fixture(scope="module")
def sam_model():
    return loader.load_model(str(TRAINED_SAM_PATH), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def fastsam_model():
    return loader.load_model(str(TRAINED_FASTSAM_PATH), device="cpu", precision="fp32")


@pytest.mark.parametrize("family", ["sam", "fastsam"])
@pytest.mark.parametrize("h,w", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_tiny_sam_and_seg_map_give_masks_at_the_input_size(family, h, w, request):
    model = request.getfixturevalue(f"{family}_model")
    image = from_uint8_rgb(_image(h, w))
    # clicks through positive_coords: point_prompt skips [0, 0] (fal's "no point"), the only pixel of 1x1
    requests = {
        "click": TinySamRequest(size=256, confidence=0.0, positive_coords=f"[[{w // 2}, 0]]"),
        "box": TinySamRequest(size=256, confidence=0.0, box_prompt=[[0, 0, w, h]]),
        "click in box": TinySamRequest(size=256, confidence=0.0, box_prompt=[[0, 0, w, h]],
                                       positive_coords=f"[[0, {h - 1}]]"),
        "everything": TinySamRequest(size=256, confidence=0.0),
    }
    for name, req in requests.items():
        result = segment_with_prompts(model, image, req)
        assert result.image.shape == (1, h, w, 3) and result.mask.shape == (1, h, w), name
        assert result.object_masks.shape[1:] == (h, w), name
        assert torch.equal(result.mask[0] > 0.5, (result.object_masks > 0.5).any(0)), name
        if name != "everything" and family == "sam":  # one object per prompt (dropped if its mask is empty)
            assert result.counts[0] <= 1, name
    for layers in (0, 1, 2):
        settings = AutoMaskSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=layers)
        result = segmentation_map(model, image, settings)
        assert result.seg_map.shape == (1, h, w, 3) and result.coverage.shape == (1, h, w), layers
        assert result.segments.shape[1:] == (h, w), layers


@pytest.mark.parametrize("h,w", [(1, 640), (640, 1), (3, 5000), (1, 1), (2, 700)])
def test_a_click_on_a_strip_is_segment_anythings_click_with_the_same_resize(h, w):
    # small_model(): a 256 px SAM whose decoder outputs are spread (untrained logits sit near 0),
    # so strips get non-empty masks and scores that depend on every step of the resize
    model = small_model()
    image = _image(h, w, seed=h + w)
    predictor = SamPredictor(model.runner)
    predictor.transform = SamResize(model.runner.image_encoder.img_size)
    predictor.set_image(image)
    non_empty = 0
    for point in ([0, 0], [w // 6, h // 2], [w - 1, h - 1]):
        masks, scores, _ = predictor.predict(point_coords=np.array([point]), point_labels=np.array([1]),
                                             multimask_output=True)
        best = int(np.argmax(scores))
        got = segment_prompted(model, image, ImagePrompts(points=(tuple(point),), labels=(1,)), confidence=0.0,
                               cache=EmbeddingCache())
        mask = got.masks[0].numpy()
        # the pack's decoder equals MaskDecoder's logits to 1e-5 (test_point_decoder): a pixel at
        # the threshold could differ; none did on these strips
        assert mask.shape == (h, w) and np.array_equal(mask, masks[best]), (point, int((mask != masks[best]).sum()))
        assert abs(float(got.scores[0]) - float(scores[best])) < 1e-4
        non_empty += bool(mask.any())
    # the comparison is not only of empty masks (1x1: this model's one pixel is background; the
    # predicted-IoU comparison above still checks the resize there)
    assert non_empty >= 1 or h * w == 1


@pytest.mark.parametrize("h,w", [(1, 640), (700, 2)])
def test_everything_on_a_strip_is_segment_anythings_generator_with_the_same_resize(h, w):
    sam = build_trained_sam()
    settings = AutoMaskSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    generator = SamAutomaticMaskGenerator(sam, **settings.reference_kwargs())
    generator.predictor.transform = SamResize(sam.image_encoder.img_size)
    image = _image(h, w, seed=5)
    reference = generator.generate(image)
    ours = generate_segments(sam, image, settings)
    assert len(reference) > 1 and len(ours) == len(reference)
    for i, rec in enumerate(reference):
        assert np.array_equal(ours.masks[i].numpy(), rec["segmentation"]), i
        assert abs(float(ours.predicted_iou[i]) - rec["predicted_iou"]) < 1e-4
