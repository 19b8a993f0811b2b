"""The pack in a real, headless ComfyUI (set COMFYUI_PATH to a ComfyUI checkout with its
requirements installed; COMFYUI_PYTHON if they live in another interpreter)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from testsupport.checkpoints import build_small_sam, save_sam_checkpoint

ROOT = Path(__file__).resolve().parents[1]
COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not COMFYUI, reason="COMFYUI_PATH is not set: no ComfyUI checkout to run the pack in"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    shutil.copytree(ROOT, base / "custom_nodes" / "comfyui-sam-kit",
                    ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "out", "tests"))
    sam = build_small_sam(seed=4)
    with torch.no_grad():  # untrained weights: open up logits and scores so segments appear
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(40.0)
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(1.0)
    save_sam_checkpoint(sam, base / "models" / "sams" / "test_small.pth")
    (base / "input").mkdir()
    shutil.copy(ROOT / "docs" / "images" / "example.png", base / "input" / "example.png")
    port = _free_port()
    log = open(base / "server.log", "w")
    proc = subprocess.Popen(
        [os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--base-directory", str(base), "--disable-auto-launch"],
        cwd=COMFYUI, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):  # bounded wait for start-up
        try:
            urllib.request.urlopen(url + "/system_stats", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((base / "server.log").read_text()[-3000:])
            time.sleep(0.5)
    yield url, base
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _get(url):
    return json.load(urllib.request.urlopen(url, timeout=30))


def _queue(url, prompt):
    req = urllib.request.Request(url + "/prompt", data=json.dumps({"prompt": prompt, "client_id": "t"}).encode(),
                                 headers={"Content-Type": "application/json"})
    prompt_id = json.load(urllib.request.urlopen(req, timeout=30))["prompt_id"]
    for _ in range(600):
        history = _get(f"{url}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("status_str") in ("success", "error"):
            return history[prompt_id]
        time.sleep(0.5)
    raise TimeoutError(prompt_id)


PROMPT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    "2": {"class_type": "SamKitModelLoader", "inputs": {"model_name": "test_small.pth", "device": "auto", "precision": "auto"}},
    "3": {"class_type": "SamKitSegmentationMap", "inputs": {"model": ["2", 0], "image": ["1", 0], "points_per_side": 6,
          "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "min_mask_region_area": 0, "crop_n_layers": 0, "seed": 1}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "segmap"}},
    "5": {"class_type": "SamKitTinySAM", "inputs": {"model": ["2", 0], "image": ["1", 0], "size": 1024, "confidence": 0.4,
          "iou": 0.9, "box_prompt": "[[140,170,210,220]]", "point_prompt": "[[0,0]]", "point_label": "[0]"}},
    "6": {"class_type": "GrowMask", "inputs": {"mask": ["5", 1], "expand": 4, "tapered_corners": True}},
    "7": {"class_type": "FeatherMask", "inputs": {"mask": ["6", 0], "left": 4, "top": 4, "right": 4, "bottom": 4}},
    "8": {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["1", 0], "source": ["5", 0], "x": 0, "y": 0,
          "resize_source": False, "mask": ["7", 0]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "composite"}},
    "10": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 2]}},
    "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "coverage"}},
}


def test_object_info_lists_the_nodes_with_their_types(comfy):
    url, _ = comfy
    info = _get(url + "/object_info")
    assert info["SamKitModelLoader"]["output"] == ["SAMKIT_MODEL"]
    assert info["SamKitModelLoader"]["input"]["required"]["model_name"][0][0] == "test_small.pth"
    assert info["SamKitSegmentationMap"]["output"] == ["IMAGE", "MASK", "MASK"]
    assert info["SamKitTinySAM"]["output"] == ["IMAGE", "MASK", "MASK", "BOUNDING_BOX"]
    assert info["SamKitSegmentPicker"]["output"] == ["MASK"]


def test_chains_into_core_mask_nodes_and_reuses_the_model(comfy):
    url, base = comfy
    from PIL import Image

    for seed in (1, 2):  # the second run changes the palette only: the model must not load again
        prompt = json.loads(json.dumps(PROMPT))
        prompt["3"]["inputs"]["seed"] = seed
        result = _queue(url, prompt)
        assert result["status"]["status_str"] == "success", json.dumps(result["status"])[:2000]
        for node in ("4", "9", "11"):
            (image,) = result["outputs"][node]["images"]
            with urllib.request.urlopen(f"{url}/view?filename={image['filename']}&type=output", timeout=30) as response:
                saved = Image.open(response)
                saved.load()
            assert saved.size == (768, 512)
    assert (base / "server.log").read_text().count("SAM Kit: loading test_small.pth") == 1
