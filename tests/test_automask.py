"""Everything mode: the pack's generator against segment-anything's SamAutomaticMaskGenerator."""

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator

from comfyui_sam_kit.samkit import point_decoder
from comfyui_sam_kit.samkit.automask import AutoMaskSettings, generate_segments
from testsupport.checkpoints import build_small_sam

# Our segments against the reference's, mask by mask. Measured on these scenes (x86 CPU, torch
# 2.14): IoU 1.0 for all but a handful of masks, lowest 0.99988 (2 pixels differ among 432 masks):
# a logit within rounding of the 0 cut-off lands on the other side when the decoder runs the
# points in other batches (other BLAS kernels). 0.99 leaves room for other CPUs and libraries; a
# wrong mask (another point's, another crop's, a shifted one) is far below it.
SAME_MASK_IOU = 0.99


@pytest.fixture(scope="module")
def random_sam():
    sam = build_small_sam(seed=0).eval()
    # Untrained weights give logits near zero everywhere (every stability score 0, every
    # predicted IoU about 0). Scaling the decoder's output layers spreads them out so the
    # filters have something to decide; the code under test is unchanged.
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(40.0)
        sam.mask_decoder.iou_prediction_head.layers[-1].weight.mul_(4.0)
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(0.5)
    return sam


def _scene(h=120, w=170, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    img[10:70, 20:90] = (220, 40, 40)
    img[50:110, 100:160] = (40, 200, 60)
    return img


def _assert_same_segments(ref_records, ours, min_iou=SAME_MASK_IOU):
    assert len(ours) == len(ref_records)
    for i, rec in enumerate(ref_records):
        ref_mask = torch.as_tensor(rec["segmentation"])
        mask = ours.masks[i].cpu()
        union = (ref_mask | mask).sum()
        iou = float((ref_mask & mask).sum() / union) if union else 1.0
        assert iou >= min_iou, f"segment {i}: IoU {iou:.4f}"
        assert abs(float(ours.predicted_iou[i]) - rec["predicted_iou"]) < 1e-4
        x, y, w, h = rec["bbox"]
        assert ours.boxes[i].tolist() == [x, y, x + w, y + h]


@pytest.mark.parametrize(
    "settings",
    [
        # no thresholds: every mask of every point goes through upsampling, boxes and NMS
        AutoMaskSettings(points_per_side=12, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
        # crop layers and small-region clean-up
        AutoMaskSettings(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0,
                         crop_n_layers=1, crop_nms_thresh=1.0, min_mask_region_area=40),
    ],
    ids=["all-masks", "crops-and-cleanup"],
)
def test_same_segments_as_the_reference_on_the_same_checkpoint(random_sam, settings):
    image = _scene()
    reference = SamAutomaticMaskGenerator(random_sam, **settings.reference_kwargs()).generate(image)
    ours = generate_segments(random_sam, image, settings)
    assert len(reference) > 1, "settings must let several masks through for the comparison to mean anything"
    _assert_same_segments(reference, ours)


@pytest.mark.parametrize("chunk_bytes", [None, 1], ids=["default-chunks", "one-prompt-chunks"])
def test_same_segments_when_the_thresholds_cut_through_the_masks(random_sam, chunk_bytes, monkeypatch):
    # Put both thresholds at the median of what this checkpoint produces, so about half of the
    # masks fail each filter: the filters must drop exactly the masks the reference drops.
    # With a 1-byte budget every decoder, upscale and upsample chunk holds a single prompt.
    if chunk_bytes is not None:
        monkeypatch.setattr(point_decoder, "CPU_CHUNK_BYTES", chunk_bytes)
    image = _scene(seed=3)
    open_settings = AutoMaskSettings(points_per_side=12, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    everything = SamAutomaticMaskGenerator(random_sam, **open_settings.reference_kwargs()).generate(image)
    settings = AutoMaskSettings(
        points_per_side=12,
        pred_iou_thresh=float(np.median([r["predicted_iou"] for r in everything])),
        stability_score_thresh=float(np.median([r["stability_score"] for r in everything])),
        box_nms_thresh=1.0,
    )
    reference = SamAutomaticMaskGenerator(random_sam, **settings.reference_kwargs()).generate(image)
    assert 1 < len(reference) < len(everything)
    _assert_same_segments(reference, generate_segments(random_sam, image, settings))


def test_point_batch_size_does_not_change_the_result(random_sam):
    image = _scene(seed=1)
    base = AutoMaskSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    small = generate_segments(random_sam, image, base)
    large = generate_segments(random_sam, image, AutoMaskSettings(**{**base.reference_kwargs(), "points_per_batch": 512}))
    assert len(small) == len(large) > 0
    ious = [(a & b).sum() / (a | b).sum() for a, b in zip(small.masks, large.masks)]
    assert min(float(x) for x in ious) >= SAME_MASK_IOU  # measured here: every mask identical (IoU 1.0)


def test_nothing_passing_gives_empty_segments_of_the_right_shape(random_sam):
    image = _scene(h=37, w=53)
    segs = generate_segments(random_sam, image, AutoMaskSettings(points_per_side=4, pred_iou_thresh=1.0))
    assert len(segs) == 0
    assert segs.masks.shape == (0, 37, 53) and segs.masks.dtype == torch.bool
    # the reference crashes on an empty result with crop layers; we return nothing instead
    segs = generate_segments(random_sam, image, AutoMaskSettings(points_per_side=4, pred_iou_thresh=1.0, crop_n_layers=1))
    assert segs.masks.shape == (0, 37, 53)


@pytest.mark.parametrize("bad", [dict(points_per_side=0), dict(pred_iou_thresh=1.5), dict(min_mask_region_area=-1),
                                 dict(crop_n_layers=9)])
def test_bad_settings_are_clear_errors(random_sam, bad):
    with pytest.raises(ValueError):
        generate_segments(random_sam, _scene(), AutoMaskSettings(**bad))


def test_rejects_non_rgb_uint8(random_sam):
    with pytest.raises(ValueError, match="RGB uint8"):
        generate_segments(random_sam, _scene().astype(np.float32), AutoMaskSettings(points_per_side=2))


def test_mask_boxes_equal_the_references_boxes_of_the_thresholded_masks():
    # automask_crop.mask_boxes replaces amg.batched_mask_to_box(logits > t) on the hot path; it must
    # give the same int64 boxes for every kind of mask: empty, one pixel, touching each border, full,
    # several blobs, and on odd sizes (rows and columns are separate reductions)
    from segment_anything.utils.amg import batched_mask_to_box

    from comfyui_sam_kit.samkit.automask_crop import mask_boxes

    g = torch.Generator().manual_seed(7)
    for h, w in [(1, 1), (1, 9), (7, 1), (37, 53), (64, 64)]:
        logits = torch.randn(12, h, w, generator=g) * 4 - 6  # mostly below 0: sparse masks
        logits[0] = -5.0  # empty
        logits[1] = -5.0
        logits[1, h // 2, w // 2] = 3.0  # one pixel
        logits[2] = 5.0  # full
        logits[3] = -5.0
        logits[3, :, -1] = 1.0  # the last column only
        logits[4] = -5.0
        logits[4, -1, :] = 1.0  # the last row only
        expected = batched_mask_to_box(logits > 0.0)
        got = mask_boxes(logits, 0.0)
        assert got.dtype == expected.dtype and torch.equal(got, expected), (h, w)
