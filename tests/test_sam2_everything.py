"""Everything mode on SAM 2.1 through the shared driver (automask + sam2_backend) equals Meta's
SAM2AutomaticMaskGenerator on the same checkpoint, with the same settings.

Checkpoint: Meta's real hiera-tiny architecture, random weights calibrated so masks are stable
(testsupport/sam2_checkpoints.calibrate_for_everything). Its untrained prompt path varies masks
little from point to point, so box NMS at the reference's 0.7 leaves one segment; the test runs
the reference's defaults (``SAM2AutomaticMaskGenerator``: pred_iou_thresh 0.8, stability 0.95,
offset 1.0) on an 8x8 grid with ``box_nms_thresh=1.0`` given to both sides, so every stable mask
is compared, one by one, not just the one NMS keeps.
"""

from dataclasses import replace

import numpy as np
import pytest
import torch
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

from comfyui_sam_kit.samkit import loader, precision
from comfyui_sam_kit.samkit.automask import FilterCounts, generate_segments
from comfyui_sam_kit.samkit.sam2_backend import SAM2_DEFAULTS, Sam2Backend
from testsupport.sam2_checkpoints import everything_state_dict, meta_model_from, save_sam2_checkpoint

H, W = 150, 200


def _image():
    g = torch.Generator().manual_seed(0)
    field = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 8, generator=g), (H, W), mode="bicubic", align_corners=False)
    return (field.clamp(0, 1)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def test_segments_equal_the_reference_generator(tmp_path):
    state = everything_state_dict(seed=0)
    model = loader.load_model(str(save_sam2_checkpoint(state, tmp_path / "any_name.pt")), device="cpu")
    settings = replace(SAM2_DEFAULTS, points_per_side=8, box_nms_thresh=1.0)
    image = _image()
    counts = FilterCounts()
    with precision.for_model(model):
        ours = generate_segments(Sam2Backend(model.runner), image, settings, counts)
    reference = SAM2AutomaticMaskGenerator(meta_model_from(state), **settings.reference_kwargs()).generate(image)

    # measured: 192 candidates -> 128 pass predicted IoU -> 128 pass stability -> 128 segments, and
    # 128 reference segments: the IoU filter throws a third away, as a trained model's would more
    # or less; the bounds keep the test meaningful without pinning the calibration
    assert counts.candidates == 192 and 20 <= len(reference) < counts.candidates
    assert len(ours) == len(reference)
    masks = ours.masks.numpy()
    unmatched = list(range(len(masks)))
    for ref in reference:
        want = ref["segmentation"]
        ious = [float((want & masks[i]).sum()) / max(1, float((want | masks[i]).sum())) for i in unmatched]
        best = int(np.argmax(ious))
        i = unmatched.pop(best)
        # measured: 127 segments IoU 1.0 with their reference, one 0.99995; predicted IoU within
        # 1.2e-7, stability scores equal. 0.99 is the bound
        assert ious[best] >= 0.99
        assert float(ours.predicted_iou[i]) == pytest.approx(ref["predicted_iou"], abs=1e-4)
        assert float(ours.stability_score[i]) == pytest.approx(ref["stability_score"], abs=1e-3)


def test_object_aware_takes_its_boxes_for_sam2_in_the_seg_map_and_tiny_sam(tmp_path):
    # SAM 2 runs everything mode through the same driver as SAM, so object-aware sampling must reach
    # it with the proposals given (they were once dropped for every model but SAM 1, and object-aware
    # on SAM 2 then failed with "connect a proposal model" although one was connected)
    from comfyui_sam_kit.samkit.segmap import segmentation_map
    from comfyui_sam_kit.samkit.tiny_sam_job import TinySamRequest, segment_with_prompts

    model = loader.load_model(str(save_sam2_checkpoint(everything_state_dict(seed=0), tmp_path / "any_name.pt")),
                              device="cpu")
    asked = []

    def proposals(crop_rgb):
        asked.append(crop_rgb.shape)
        return np.array([[20.0, 20.0, 120.0, 100.0], [100.0, 40.0, 190.0, 140.0]])

    image = torch.from_numpy(_image()).float()[None] / 255
    settings = replace(SAM2_DEFAULTS, points_per_side=4, box_nms_thresh=1.0)
    result = segmentation_map(model, image, settings, sampling="object-aware", proposals=proposals)
    assert asked == [(H, W, 3)] and result.counts[0] > 0
    with pytest.raises(ValueError, match="proposal"):
        segmentation_map(model, image, settings, sampling="object-aware")
    segment_with_prompts(model, image, TinySamRequest(sampling="object-aware", confidence=0.0), proposals=proposals)
    assert asked == [(H, W, 3)] * 2
