"""docs/images/fixture_segmap_and_click.png: the pack's nodes run on the trained test SAM.

Input scene | SAM Segmentation Map | Tiny SAM with one click (green) and one box (blue), on a
held-out synthetic scene, through the node classes (the same code ComfyUI runs). It lives with
the fixtures it draws (tools/ never imports the test tree).

    python tests/testmodels/make_readme_pictures.py
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # run as a script: make `testsupport` importable
# import the repo as the package ComfyUI would (as tests/conftest.py does)
package = types.ModuleType("comfyui_sam_kit")
package.__path__ = [str(ROOT)]
sys.modules["comfyui_sam_kit"] = package

from comfyui_sam_kit.nodes.seg_map import SamKitSegmentationMap  # noqa: E402
from comfyui_sam_kit.nodes.tiny_sam import SamKitTinySAM  # noqa: E402
from comfyui_sam_kit.samkit import loader  # noqa: E402
from testsupport.trained import TRAINED_SAM_PATH, heldout_scene, interior_point  # noqa: E402
from testsupport.trained_fastsam import xywh_of  # noqa: E402


def main() -> int:
    scene = heldout_scene(5, 240, 320)
    model = loader.load_model(str(TRAINED_SAM_PATH), device="cpu", precision="fp32")
    image = torch.from_numpy(scene.image).float()[None] / 255
    seg_map, _, _ = SamKitSegmentationMap().run(model, image, points_per_side=16, pred_iou_thresh=0.5,
                                                stability_score_thresh=0.7, min_mask_region_area=0, crop_n_layers=0, seed=0)
    x, y = interior_point(scene.masks[0])
    box = xywh_of(scene.boxes_xyxy[1])
    overlay, _, _, _ = SamKitTinySAM().run(model, image, size=1024, confidence=0.0, iou=0.9, box_prompt=f"[{box}]",
                                          point_prompt=f"[[{x},{y}]]", point_label="[1]")
    tiles = [Image.fromarray((t[0].numpy() * 255).round().astype(np.uint8)) for t in (image, seg_map, overlay)]
    draw = ImageDraw.Draw(tiles[2])
    draw.ellipse([x - 4, y - 4, x + 4, y + 4], outline=(0, 255, 0), width=2)
    draw.rectangle([box[0], box[1], box[0] + box[2] - 1, box[1] + box[3] - 1], outline=(60, 140, 255), width=2)
    w, h = tiles[0].size
    sheet = Image.new("RGB", (3 * w + 20, h), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (i * (w + 10), 0))
    out = ROOT / "docs" / "images" / "fixture_segmap_and_click.png"
    sheet.save(out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
