"""A renamed SAM 2.1 hiera-tiny checkpoint in models/sams runs in the seg map and Tiny SAM inside a real ComfyUI."""

from __future__ import annotations

import numpy as np
import pytest

# the checkpoint is built with Meta's own sam2 package (tests/requirements.txt): present in the
# venv tests/run.sh makes, not necessarily in a ComfyUI Python that runs pytest itself
pytest.importorskip("sam2", reason="Meta's sam2 package is not installed in the Python running pytest "
                                   "(run through tests/run.sh, or pip install -r tests/requirements.txt)")

from testsupport import comfy_assets as A
from testsupport.sam2_checkpoints import save_sam2_checkpoint, tiny_state_dict

MODEL = "my_segmenter.pt"  # the official sam2.1_hiera_tiny.pt layout under another name


def test_renamed_sam21_tiny_runs_both_nodes(comfy_server, sams_dir):
    save_sam2_checkpoint(tiny_state_dict(seed=0, version="2.1", spread=True), sams_dir / MODEL)
    prompt = {"1": A.load_image(A.SCENE_IMAGE), "2": A.loader(MODEL),
              "3": A.tiny_sam(["2", 0], ["1", 0], point_prompt="[[128,128]]", point_label="[1]", confidence=0.0),
              "4": A.mask_to_image(["3", 1]), "5": A.save_image(["4", 0], "sam2_click"),
              "6": A.seg_map(["2", 0], ["1", 0], points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0),
              "7": A.save_image(["6", 0], "sam2_segmap")}
    entry = comfy_server.run_ok(prompt, timeout=600.0)
    assert f"SAM Kit: loading {MODEL}" in comfy_server.log_text()
    mask = A.mask_of(comfy_server.saved_image(entry, "5"))

    # the same click in this process, through the pack's loader, on the server's file and input
    from comfyui_sam_kit.nodes.tiny_sam import SamKitTinySAM
    from comfyui_sam_kit.samkit.images import from_uint8_rgb
    from comfyui_sam_kit.samkit.loader import load_model

    model = load_model(sams_dir / MODEL, device="cpu", precision="fp32")
    image = from_uint8_rgb(A.read_png(comfy_server.base_dir / "input" / A.SCENE_IMAGE))
    _img, own_mask, _objects, _boxes = SamKitTinySAM().run(model, image, 1024, 0.0, 0.9, "[[0,0,0,0]]", "[[128,128]]", "[1]")
    assert mask.any()
    np.testing.assert_array_equal(mask, own_mask[0].numpy() > 0.5)
    seg = comfy_server.saved_image(entry, "7")
    assert seg.shape == (256, 256, 3) and seg.any()
