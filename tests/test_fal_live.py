"""The remote nodes against the real fal.ai (costs money: opt-in only).

Runs only with FAL_KEY (or FAL_KEY_ID + FAL_KEY_SECRET) set AND SAMKIT_FAL_LIVE=1:

    SAMKIT_FAL_LIVE=1 FAL_KEY=... python -m pytest tests/test_fal_live.py -m live
"""

import os

import pytest
import torch

from comfyui_sam_kit.nodes.fal_remote import SamKitFalSegmentationMap, SamKitFalTinySAM
from comfyui_sam_kit.nodes.fal_sam3 import SamKitFalSAM3

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        os.environ.get("SAMKIT_FAL_LIVE") != "1"
        or not (os.environ.get("FAL_KEY") or (os.environ.get("FAL_KEY_ID") and os.environ.get("FAL_KEY_SECRET"))),
        reason="live fal.ai test: set FAL_KEY and SAMKIT_FAL_LIVE=1 to run it (it is billed)",
    ),
]


def _scene(h=256, w=320):
    """A grey background with a red disc and a blue square: objects any SAM finds."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = torch.full((1, h, w, 3), 0.5)
    disc = (yy - 128) ** 2 + (xx - 100) ** 2 < 50**2
    image[0][disc] = torch.tensor([0.9, 0.1, 0.1])
    image[0, 60:160, 200:290] = torch.tensor([0.1, 0.2, 0.9])
    return image, disc


def test_tiny_sam_on_fal_finds_the_clicked_disc(monkeypatch):
    monkeypatch.delenv("SAMKIT_FAL_BASE_URL", raising=False)
    image, disc = _scene()
    out, mask = SamKitFalTinySAM().run(image, 1024, 0.4, "[[0,0,0,0]]", "[[100,128]]", "[1]", "fal", timeout=300)
    assert out.shape == (1, 256, 320, 3) and mask.shape == (1, 256, 320)
    inter = (mask[0].bool() & disc).sum()
    assert inter / disc.sum() > 0.5, "the clicked disc is not in the mask"


def test_segmentation_map_on_fal_covers_the_objects(monkeypatch):
    monkeypatch.delenv("SAMKIT_FAL_BASE_URL", raising=False)
    image, disc = _scene()
    seg_map, coverage = SamKitFalSegmentationMap().run(image, "fal", timeout=300)
    assert seg_map.shape == (1, 256, 320, 3) and coverage.shape == (1, 256, 320)
    assert coverage[0][disc].float().mean() > 0.5


@pytest.mark.parametrize("job", ["sam-3 (masks)", "sam-3 (rle)"])
def test_sam3_on_fal_finds_the_boxed_disc_as_mask_image_and_as_rle(monkeypatch, job):
    # the RLE job checks this pack's reading of fal's "Kaggle/COCO order" RLE against the real service
    monkeypatch.delenv("SAMKIT_FAL_BASE_URL", raising=False)
    image, disc = _scene()
    masks, union, boxes = SamKitFalSAM3().run(image, job, "", "[[48,76,104,104]]", "[[0,0]]", "[0]", 3, "fal",
                                              timeout=300)
    assert masks.shape[1:] == (256, 320) and len(boxes[0]) >= 1
    inter = (masks[0].bool() & disc).sum()
    assert inter / (masks[0].bool() | disc).sum() > 0.5, "the boxed disc is not the first object's mask"
