"""What the integration tests put into a test ComfyUI's base directory, and small helpers on it.

* ``prepare_base(repo_root, base) -> Path``: the pack in custom_nodes (plus the test-only probe
  nodes of tests/integration/probe_nodes), checkpoints in models/sams, test images in input
  (names below; EDITOR_IMAGE_2 also in output, for Load Image (from Outputs)), empty placeholders for
  the SD files the shipped workflows name, and frontend settings of a returning user. Returns ``base``.
* ``set_frontend_setting(server, setting_id, value)``: one frontend setting of the server's user
  (a page reads them when it loads), e.g. ``Comfy.VueNodes.Enabled`` for Nodes 2.0.
* ``scene()``: the held-out shapes scene the runs segment (256x256, exact ground truth);
  ``editor_image()``, ``editor_image_2()``: the browser test's 320x200 and 200x300 images.
* ``png_bytes(array)``, ``read_png(path)``, ``mask_of(png_rgb)``: PNG encode / decode; a saved
  mask image back to bool.
* API-prompt pieces: ``load_image``, ``loader``, ``seg_map``, ``tiny_sam``, ``save_image``,
  ``mask_to_image``; ``long_seg_map_prompt()``: a run of minutes that can be interrupted.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np

from . import comfyui

TESTMODELS = Path(__file__).resolve().parents[1] / "testmodels"

SMALL_SAM = "test_small.pth"  # random weights, fast: plumbing, interrupts
CACHE_PROBE_SAM = "cache_probe.pth"  # a copy, loaded only by the model-cache test
TRAINED_SAM = "sam_shapes.pth"  # tests/testmodels fixture: really segments shapes scenes
TRAINED_FASTSAM = "fastsam_shapes.pt"  # tests/testmodels fixture (ultralytics YOLOv8-seg)
RANDOM_FASTSAM = "fastsam_random.pt"  # FastSAM's architecture with random weights

SCENE_IMAGE = "samkit_scene.png"  # held-out shapes scene, 256x256 (the trained models' size)
SCENE_SEED_INDEX = 3
BIG_IMAGE = "samkit_big.png"  # 1024x1024 scene for the long (interrupted) run
EXAMPLE_IMAGE = "example.png"  # the name the shipped workflows load (docs/images/example.png)
EDITOR_IMAGE = "samkit_editor_320x200.png"  # the browser test's image: not square, so scale/offset errors show
EDITOR_SIZE = (320, 200)
EDITOR_COLOURS = {"ellipse": (220, 80, 60), "rectangle": (80, 200, 90), "background": (40, 60, 90)}
# the image the browser test switches to upstream: portrait where the first is landscape, four quadrants
EDITOR_IMAGE_2 = "samkit_editor_200x300.png"
EDITOR_SIZE_2 = (200, 300)
EDITOR_QUADRANTS = ((230, 200, 40), (40, 200, 220), (200, 60, 200), (235, 235, 235))  # TL, TR, BL, BR

PROBE_NODES = Path(__file__).resolve().parents[1] / "integration" / "probe_nodes"
PROBE_FOLDER = "samkit_test_probes"


def scene():
    from testmodels.shapes import HELDOUT_SEEDS, make_scene

    return make_scene(HELDOUT_SEEDS[SCENE_SEED_INDEX], 256, 256)


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_of(rgb: np.ndarray) -> np.ndarray:
    """A MaskToImage + SaveImage PNG (grey levels) back to a bool mask."""
    return rgb[..., 0] >= 128


def _write_models(sams: Path) -> None:
    import torch

    from .checkpoints import build_small_sam, save_fastsam_checkpoint, save_sam_checkpoint

    sam = build_small_sam(seed=4)
    with torch.no_grad():  # random weights: open up logits and scores so that segments appear at all
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(40.0)
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(1.0)
    save_sam_checkpoint(sam, sams / SMALL_SAM)
    shutil.copy(sams / SMALL_SAM, sams / CACHE_PROBE_SAM)
    save_fastsam_checkpoint(sams / RANDOM_FASTSAM, seed=1)
    for name in (TRAINED_SAM, TRAINED_FASTSAM):
        if (TESTMODELS / name).is_file():
            shutil.copy(TESTMODELS / name, sams / name)


def editor_image():
    """320x200 RGB: a red ellipse (40..140, 40..160), a green rectangle (190..290, 60..150) on blue."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", EDITOR_SIZE, EDITOR_COLOURS["background"])
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 40, 140, 160), fill=EDITOR_COLOURS["ellipse"])
    draw.rectangle((190, 60, 290, 150), fill=EDITOR_COLOURS["rectangle"])
    return np.asarray(image)


def editor_image_2():
    """200x300 RGB in four flat quadrants (EDITOR_QUADRANTS: top-left, top-right, bottom-left, bottom-right)."""
    (w, h), image = EDITOR_SIZE_2, np.zeros((EDITOR_SIZE_2[1], EDITOR_SIZE_2[0], 3), np.uint8)
    for i, colour in enumerate(EDITOR_QUADRANTS):
        image[(i // 2) * h // 2:(i // 2 + 1) * h // 2, (i % 2) * w // 2:(i % 2 + 1) * w // 2] = colour
    return image


def _write_inputs(inputs: Path, repo_root: Path) -> None:
    from testmodels.shapes import HELDOUT_SEEDS, make_scene

    (inputs / SCENE_IMAGE).write_bytes(png_bytes(scene().image))
    (inputs / EDITOR_IMAGE_2).write_bytes(png_bytes(editor_image_2()))
    (inputs.parent / "output").mkdir(exist_ok=True)  # for Load Image (from Outputs)
    (inputs.parent / "output" / EDITOR_IMAGE_2).write_bytes(png_bytes(editor_image_2()))
    (inputs / BIG_IMAGE).write_bytes(png_bytes(make_scene(HELDOUT_SEEDS[7], 1024, 1024).image))
    (inputs / EDITOR_IMAGE).write_bytes(png_bytes(editor_image()))
    shutil.copy(repo_root / "docs" / "images" / "example.png", inputs / EXAMPLE_IMAGE)


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def prepare_base(repo_root: Path, base: Path) -> Path:
    comfyui.install_pack(repo_root, base)
    shutil.copytree(PROBE_NODES, base / "custom_nodes" / PROBE_FOLDER,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
    for sub in ("models/sams", "input"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    _write_models(base / "models" / "sams")
    _write_inputs(base / "input", repo_root)
    _write_frontend_settings(base / "user" / "default")
    _write_placeholder_models(repo_root, base / "models")
    return base


def _write_placeholder_models(repo_root: Path, models: Path) -> None:
    """The SD files the shipped workflows name, as empty files: ComfyUI then lists them, so its own
    validation of those workflows can pass. The prompts that name them are validated, never run."""
    from .workflow_checks import workflow_tool

    tool = workflow_tool(repo_root)
    for folder, name in (("checkpoints", tool.SD15_CHECKPOINT), ("controlnet", tool.SEG_CONTROLNET)):
        (models / folder).mkdir(parents=True, exist_ok=True)
        (models / folder / name).write_bytes(b"")


def _write_frontend_settings(user_dir: Path) -> None:
    """A returning user's settings: the first-visit template gallery would cover the graph."""
    import json

    user_dir.mkdir(parents=True, exist_ok=True)
    (user_dir / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))


def set_frontend_setting(server, setting_id: str, value) -> None:
    """POST /settings/<id> on a running ComfyUI (its own route; the frontend reads it on page load)."""
    response = server.client.post(f"/settings/{setting_id}", json=value)
    response.raise_for_status()
    assert server.get_json("/settings").get(setting_id) == value, f"{setting_id} was not stored"


# ---------------------------------------------------------------------- API-prompt pieces
def load_image(name: str) -> dict:
    return {"class_type": "LoadImage", "inputs": {"image": name}}


def loader(model_name: str) -> dict:
    return {"class_type": "SamKitModelLoader", "inputs": {"model_name": model_name, "device": "auto", "precision": "auto"}}


def seg_map(model, image, *, points_per_side=16, pred_iou_thresh=0.88, stability_score_thresh=0.95,
            min_mask_region_area=0, crop_n_layers=0, seed=0) -> dict:
    return {"class_type": "SamKitSegmentationMap", "inputs": {
        "model": model, "image": image, "points_per_side": points_per_side, "pred_iou_thresh": pred_iou_thresh,
        "stability_score_thresh": stability_score_thresh, "min_mask_region_area": min_mask_region_area,
        "crop_n_layers": crop_n_layers, "seed": seed}}


def tiny_sam(model, image, *, size=1024, confidence=0.4, iou=0.9, box_prompt="[[0,0,0,0]]",
             point_prompt="[[0,0]]", point_label="[0]") -> dict:
    return {"class_type": "SamKitTinySAM", "inputs": {
        "model": model, "image": image, "size": size, "confidence": confidence, "iou": iou,
        "box_prompt": box_prompt, "point_prompt": point_prompt, "point_label": point_label}}


def save_image(images, prefix: str) -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": prefix}}


def mask_to_image(mask) -> dict:
    return {"class_type": "MaskToImage", "inputs": {"mask": mask}}


def long_seg_map_prompt(prefix: str = "long") -> dict:
    """A run that takes minutes on CPU (32x32 points in batches of 8 on a 1024 px image) and checks
    for an interrupt between batches: for interrupt tests, and to keep the queue busy."""
    prompt = {"1": load_image(BIG_IMAGE), "2": loader(SMALL_SAM),
              "3": seg_map(["2", 0], ["1", 0], points_per_side=32, pred_iou_thresh=0.0, stability_score_thresh=0.0),
              "4": save_image(["3", 0], prefix)}
    prompt["3"]["inputs"]["points_per_batch"] = 8
    return prompt
