"""The remote nodes inside a real ComfyUI, against the pack's own self-hosted endpoint.

``python -m samkit serve`` runs as its own process on 127.0.0.1 (a real queue, real keys) with a
test checkpoint. The endpoint is named in the config file the ComfyUI server reads (set through
SAMKIT_FAL_CONFIG by conftest.py), so the workflow names only the endpoint, never the key. The
runs go ComfyUI -> SamKitFal* node -> HTTP -> server -> the same library code as the local nodes,
so the remote results must agree with the local nodes' on the same model; the key must not show
up in anything ComfyUI keeps (history, saved images, log).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import workflow_convert as wc
from testsupport import comfy_assets as A
from testsupport import comfyui
from testsupport.workflow_checks import preview_targets

ROOT = Path(__file__).resolve().parents[2]
ENDPOINT = "studio"
BAD_KEY_ENDPOINT = "studio-wrong-key"
KEY = "studio-id:7f3a9c0d5e1b4a2f8c6d0e9b1a3f5c7e"
SEGMAP_SETTINGS = ["--points-per-side", "8", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


@pytest.fixture(scope="module")
def fal_server(comfy_server, tmp_path_factory):
    """``python -m samkit serve`` on a free loopback port; yields its base URL."""
    work = tmp_path_factory.mktemp("samkit_serve")
    (work / "keys.txt").write_text(f"# accepted keys\n{KEY}\n")
    log_path = work / "serve.log"
    model = comfy_server.base_dir / "models" / "sams" / A.SMALL_SAM
    args = [sys.executable, "-m", "samkit", "serve", "--host", "127.0.0.1", "--port", "0", "--model", str(model),
            "--device", "cpu", "--key-file", str(work / "keys.txt"), *SEGMAP_SETTINGS]
    env = comfyui.clean_env({"SAMKIT_MODELS_DIR": str(work / "models")})
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(args, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url, deadline = None, time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"samkit serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            found = re.search(r"serving .* at (http://127\.0\.0\.1:\d+)", log_path.read_text(errors="replace"))
            url = found.group(1) if found else None
            time.sleep(0.2)
        assert url, f"samkit serve did not come up:\n{log_path.read_text()[-3000:]}"
        config = Path(comfy_server.base_dir / "samkit-fal.ini")
        config.write_text(f"[{ENDPOINT}]\nbase_url = {url}\nkey = {KEY}\n\n"
                          f"[{BAD_KEY_ENDPOINT}]\nbase_url = {url}\nkey = not-a-listed-key:0000\n")
        yield url, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        (comfy_server.base_dir / "samkit-fal.ini").unlink(missing_ok=True)


def _saved_bytes(server, entry, node_id) -> bytes:
    (ref,) = comfyui.output_images(entry, node_id)
    return server.view(ref["filename"], ref.get("subfolder", ""), ref.get("type", "output"))


def _fal_tiny(image, endpoint, **prompts) -> dict:
    inputs = {"image": image, "size": 1024, "confidence": 0.4, "box_prompt": "[[0,0,0,0]]", "point_prompt": "[[0,0]]",
              "point_label": "[0]", "endpoint": endpoint}
    inputs.update(prompts)
    return {"class_type": "SamKitFalTinySAM", "inputs": inputs}


def test_remote_nodes_run_against_the_self_hosted_endpoint(comfy_server, fal_server, sams_dir, artifacts_dir):
    url, serve_log = fal_server
    info = comfy_server.object_info("SamKitFalTinySAM")
    assert ENDPOINT in info["input"]["required"]["endpoint"][0], "the endpoint from the config file is not offered"

    box = [[60, 40, 120, 150]]
    prompt = {
        "1": A.load_image(A.SCENE_IMAGE),
        "2": _fal_tiny(["1", 0], ENDPOINT, box_prompt=json.dumps(box)),
        "3": A.mask_to_image(["2", 1]),
        "4": A.save_image(["3", 0], "fal_tiny_mask"),
        "5": A.save_image(["2", 0], "fal_tiny_image"),
        "6": {"class_type": "SamKitFalSegmentationMap", "inputs": {"image": ["1", 0], "endpoint": ENDPOINT}},
        "7": A.save_image(["6", 0], "fal_segmap"),
        "8": A.mask_to_image(["6", 1]),
        "9": A.save_image(["8", 0], "fal_coverage"),
    }
    entry = comfy_server.run_prompt(prompt, timeout=240)
    assert comfyui.status_of(entry) == "success", comfyui.describe_failure(entry)
    remote_mask = A.mask_of(comfy_server.saved_image(entry, "4"))
    remote_map = comfy_server.saved_image(entry, "7")
    remote_coverage = A.mask_of(comfy_server.saved_image(entry, "9"))
    if artifacts_dir is not None:
        (artifacts_dir / "integration_fal_segmap.png").write_bytes(A.png_bytes(remote_map))

    # the same jobs on the same model, locally (the server runs the library code the local nodes run)
    from comfyui_sam_kit.nodes.seg_map import SamKitSegmentationMap
    from comfyui_sam_kit.nodes.tiny_sam import SamKitTinySAM
    from comfyui_sam_kit.samkit.images import from_uint8_rgb, to_uint8_rgb
    from comfyui_sam_kit.samkit.loader import load_model

    model = load_model(sams_dir / A.SMALL_SAM, device="cpu", precision="fp32")
    image = from_uint8_rgb(A.read_png(comfy_server.base_dir / "input" / A.SCENE_IMAGE))
    _img, local_mask, _objects, _boxes = SamKitTinySAM().run(model, image, 1024, 0.4, 0.9, json.dumps(box), "[[0,0]]", "[0]")
    local_mask = local_mask[0].numpy() > 0.5
    assert 0.001 < local_mask.mean() < 0.95, "degenerate local mask: the comparison would prove nothing"
    agreement = (remote_mask == local_mask).mean()
    assert agreement > 0.995, f"remote Tiny SAM mask agrees with the local one on {agreement:.4f} of pixels"

    local_map, _segments, local_coverage = SamKitSegmentationMap().run(model, image, 8, 0.0, 0.0, 0, 0, 0)
    np.testing.assert_array_equal(remote_coverage, local_coverage[0].numpy() > 0.5)
    local_map = to_uint8_rgb(local_map)
    # same partition into segments (colours may be the server's own): colour pairs map one to one
    pairs = {tuple(p) for p in np.concatenate([remote_map, local_map], axis=-1).reshape(-1, 6)}
    assert len(pairs) == len({p[:3] for p in pairs}) == len({p[3:] for p in pairs}) > 1

    # the key went over HTTP, and nowhere ComfyUI keeps things
    history = json.dumps(comfy_server.get_json(f"/history/{entry['prompt'][1]}"))
    for secret in (KEY, KEY.split(":")[1]):
        assert secret not in history
        assert secret not in comfy_server.log_text()
        for node in ("4", "5", "7", "9"):
            assert secret.encode() not in _saved_bytes(comfy_server, entry, node)


def test_wrong_key_fails_with_a_clear_error_and_no_key_in_it(comfy_server, fal_server):
    prompt = {"1": A.load_image(A.SCENE_IMAGE), "2": _fal_tiny(["1", 0], BAD_KEY_ENDPOINT, point_prompt="[[60,60]]",
                                                                 point_label="[1]"),
              "3": A.save_image(["2", 0], "fal_bad_key")}
    entry = comfy_server.run_prompt(prompt, timeout=120)
    assert comfyui.status_of(entry) == "error"
    error = comfyui.status_messages(entry)["execution_error"]
    assert error["node_type"] == "SamKitFalTinySAM"
    message = error["exception_message"]
    assert "key" in message.lower(), message
    assert "not-a-listed-key" not in json.dumps(entry) and "not-a-listed-key" not in comfy_server.log_text()
    # the server stays usable: the right key still works
    ok = comfy_server.run_prompt({"1": A.load_image(A.SCENE_IMAGE),
                                  "2": _fal_tiny(["1", 0], ENDPOINT, point_prompt="[[60,60]]", point_label="[1]"),
                                  "3": A.save_image(["2", 0], "fal_good_key")}, timeout=120)
    assert comfyui.status_of(ok) == "success", comfyui.describe_failure(ok)


@pytest.mark.parametrize("name", ["fal_sam_segmentation_map_controlnet.json", "fal_tiny_sam_inpaint.json"])
def test_sam_half_of_the_remote_workflow_runs(name, comfy_server, fal_server, object_info):
    workflow = json.loads((ROOT / "workflows" / name).read_text(encoding="utf-8"))
    prompt = wc.workflow_to_prompt(workflow, object_info)
    remote = [nid for nid, node in prompt.items() if node["class_type"].startswith("SamKitFal")]
    assert remote and all(prompt[nid]["inputs"]["endpoint"] == "fal" for nid in remote)
    for nid in remote:  # the shipped file names fal.ai; here the same graph goes to the self-hosted server
        prompt[nid]["inputs"]["endpoint"] = ENDPOINT
    targets = preview_targets(prompt, object_info)
    assert targets, "no preview of the SAM Kit result"
    entry = comfy_server.wait_for_history(comfy_server.queue_prompt(prompt, partial_execution_targets=targets), timeout=240)
    assert comfyui.status_of(entry) == "success", comfyui.describe_failure(entry)
    for nid in targets:
        (ref, *_rest) = entry["outputs"][nid]["images"]
        assert comfy_server.view_image(ref).shape[:2] == (512, 768)
