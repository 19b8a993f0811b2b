"""The pack inside a real, headless ComfyUI, driven through its HTTP API.

Prompts go in through POST /prompt, results come back through /history and /view, as any API
client would use them. What a run should produce is worked out independently in this process:
the pack's own node classes run on the same checkpoint and the same input file (so the ComfyUI
plumbing — LoadImage, tensors between nodes, SaveImage — must not change a pixel), and the core
mask nodes' effects are computed from their definitions (GrowMask = dilation, composite =
blend), never read back from the run under test.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import workflow_convert
from testsupport import comfy_assets as A
from testsupport import comfyui
from testsupport.workflow_checks import key_findings

ROOT = Path(__file__).resolve().parents[2]
PACK_MODULE = "custom_nodes.comfyui-sam-kit"

# The node contract of the team brief: output types and names, and each input's type.
CONTRACT = {
    "SamKitModelLoader": {
        "outputs": [("SAMKIT_MODEL", "model")],
        "inputs": {"model_name": "COMBO", "device": "COMBO", "precision": "COMBO"},
    },
    "SamKitSegmentationMap": {
        "outputs": [("IMAGE", "seg_map"), ("MASK", "segments"), ("MASK", "coverage")],
        "inputs": {"model": "SAMKIT_MODEL", "image": "IMAGE", "points_per_side": "INT", "pred_iou_thresh": "FLOAT",
                   "stability_score_thresh": "FLOAT", "min_mask_region_area": "INT", "crop_n_layers": "INT", "seed": "INT"},
    },
    "SamKitSegmentPicker": {
        "outputs": [("MASK", "mask")],
        "inputs": {"seg_map": "IMAGE", "x": "INT", "y": "INT", "color": "STRING"},
    },
    "SamKitTinySAM": {
        "outputs": [("IMAGE", "image"), ("MASK", "mask"), ("MASK", "object_masks"), ("BOUNDING_BOX", "boxes")],
        "inputs": {"model": "SAMKIT_MODEL", "image": "IMAGE", "size": "INT", "confidence": "FLOAT", "iou": "FLOAT",
                   "box_prompt": "STRING", "point_prompt": "STRING", "point_label": "STRING",
                   "bboxes": "BOUNDING_BOX", "positive_coords": "STRING", "negative_coords": "STRING"},
    },
}
# The remote nodes mirror the local ones minus `model`, as far as fal's schemas go (fal has no
# `iou`, and the seg map job takes only the image): these inputs must be there, typed the same.
REMOTE_MIRRORS = {
    "SamKitFalTinySAM": ("SamKitTinySAM", ["image", "size", "confidence", "box_prompt", "point_prompt", "point_label",
                                           "bboxes", "positive_coords", "negative_coords"]),
    "SamKitFalSegmentationMap": ("SamKitSegmentationMap", ["image"]),
}


def _inputs(info: dict) -> dict:
    return {name: spec for section in ("required", "optional") for name, spec in info["input"].get(section, {}).items()}


def _type(spec) -> str:
    return workflow_convert.input_type(spec)


# combos listing what this machine has: model files, endpoints named in the user's config file
MACHINE_CHOICES = ("model_name", "endpoint")


def _without_machine_choices(info: dict) -> dict:
    info = json.loads(json.dumps(info))
    for section in info["input"].values():
        for name in MACHINE_CHOICES:
            if name in section and isinstance(section[name][0], list):
                section[name][0] = []
    return info


# ---------------------------------------------------------------------------- /object_info
def test_object_info_lists_every_node_with_its_types(object_info):
    pack = workflow_convert.pack_object_info(ROOT)
    served = {name for name, info in object_info.items() if info.get("python_module") == PACK_MODULE}
    assert served == set(pack), f"ComfyUI serves {sorted(served)}, the pack defines {sorted(pack)}"
    assert set(CONTRACT) <= served

    for name, expected in CONTRACT.items():
        info = object_info[name]
        assert list(zip(info["output"], info["output_name"])) == [tuple(o) for o in expected["outputs"]], name
        served_inputs = {k: _type(v) for k, v in _inputs(info).items()}
        assert {k: served_inputs.get(k) for k in expected["inputs"]} == expected["inputs"], name
        extra = set(served_inputs) - set(expected["inputs"])
        assert not extra & set(info["input"]["required"]), f"{name}: required inputs beyond the contract: {extra}"
        assert info["category"].startswith("SAM Kit"), name

    for name in served:  # what the server shows is what the classes declare (machine-dependent lists aside)
        live, own = _without_machine_choices(object_info[name]), _without_machine_choices(pack[name])
        for field in workflow_convert.COMPARED_FIELDS:
            assert live.get(field) == own.get(field), f"{name}.{field}: server {live.get(field)!r} vs class {own.get(field)!r}"

    # the model list is what models/sams holds, then the known downloadable models
    choices = object_info["SamKitModelLoader"]["input"]["required"]["model_name"][0]
    for file in (A.SMALL_SAM, A.CACHE_PROBE_SAM, A.RANDOM_FASTSAM):
        assert file in choices
    assert "mobile_sam.pt" in choices

    for remote, (local, shared) in REMOTE_MIRRORS.items():
        if remote not in pack:
            continue
        info = object_info[remote]
        remote_inputs = {k: _type(v) for k, v in _inputs(info).items()}
        local_inputs = {k: _type(v) for k, v in _inputs(object_info[local]).items()}
        assert {k: remote_inputs.get(k) for k in shared} == {k: local_inputs[k] for k in shared}, remote
        assert "model" not in remote_inputs and remote_inputs.get("endpoint") == "COMBO", remote
        assert not key_findings([{"name": n} for n in remote_inputs]), f"{remote} has a key-like input"
        local_outputs = dict(zip(object_info[local]["output_name"], object_info[local]["output"]))
        for name, kind in zip(info["output_name"], info["output"]):
            assert local_outputs.get(name) == kind, f"{remote} output {name} ({kind}) is not one of {local}'s"


# ---------------------------------------------------------------------------- helpers


def _keep(artifacts_dir, name: str, rgb: np.ndarray) -> None:
    if artifacts_dir is not None:
        (artifacts_dir / name).write_bytes(A.png_bytes(rgb))


def _in_process(sams_dir: Path, model_file: str):
    """The pack's own loader, on the server's checkpoint file (by path)."""
    from comfyui_sam_kit.samkit.loader import load_model

    return load_model(sams_dir / model_file, device="cpu", precision="fp32")


def _input_image(server, name: str):
    from comfyui_sam_kit.samkit.images import from_uint8_rgb

    return from_uint8_rgb(A.read_png(server.base_dir / "input" / name))


def _u8(image) -> np.ndarray:
    from comfyui_sam_kit.samkit.images import to_uint8_rgb

    return to_uint8_rgb(image[:1])


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Binary dilation by a diamond (4-neighbour steps): GrowMask with tapered corners."""
    grown = mask.copy()
    for _ in range(pixels):
        step = grown.copy()
        step[1:, :] |= grown[:-1, :]
        step[:-1, :] |= grown[1:, :]
        step[:, 1:] |= grown[:, :-1]
        step[:, :-1] |= grown[:, 1:]
        grown = step
    return grown


# ---------------------------------------------------------------------------- runs
def test_segmentation_map_into_save_image(comfy_server, sams_dir, artifacts_dir):
    from comfyui_sam_kit.nodes.seg_map import SamKitSegmentationMap

    settings = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, seed=3)
    # the pack's own run first: it tells where a segment is, for the picker
    own_map, _segments, own_coverage = SamKitSegmentationMap().run(
        _in_process(sams_dir, A.SMALL_SAM), _input_image(comfy_server, A.SCENE_IMAGE), settings["points_per_side"],
        settings["pred_iou_thresh"], settings["stability_score_thresh"], 0, 0, settings["seed"])
    own_covered = own_coverage[0].numpy() > 0.5
    assert own_covered.any(), "the test model finds no segment at all: the run would prove nothing"
    ys, xs = np.nonzero(own_covered)
    pick_at = (int(xs[len(xs) // 2]), int(ys[len(ys) // 2]))

    prompt = {
        "1": A.load_image(A.SCENE_IMAGE),
        "2": A.loader(A.SMALL_SAM),
        "3": A.seg_map(["2", 0], ["1", 0], **settings),
        "4": A.save_image(["3", 0], "segmap"),
        "5": A.mask_to_image(["3", 2]),
        "6": A.save_image(["5", 0], "coverage"),
        "7": {"class_type": "SamKitSegmentPicker", "inputs": {"seg_map": ["3", 0], "x": pick_at[0], "y": pick_at[1]}},
        "8": A.mask_to_image(["7", 0]),
        "9": A.save_image(["8", 0], "picked"),
    }
    entry = comfy_server.run_ok(prompt, timeout=240.0)
    seg_map, coverage, picked = (comfy_server.saved_image(entry, n) for n in ("4", "6", "9"))
    _keep(artifacts_dir, "integration_segmap.png", seg_map)

    assert seg_map.shape == (256, 256, 3)
    np.testing.assert_array_equal(seg_map, _u8(own_map), err_msg="the saved seg map differs from the pack's own run")
    covered = A.mask_of(coverage)
    np.testing.assert_array_equal(covered, own_covered)
    # black exactly where nothing was segmented
    assert (seg_map[~covered] == 0).all() and (seg_map[covered].max(axis=-1) > 0).all()
    # the picker selects every pixel of the colour under (x, y), read from the saved map
    colour = seg_map[pick_at[1], pick_at[0]]
    expected_pick = (seg_map == colour).all(axis=-1)
    assert expected_pick.any() and not expected_pick.all()
    np.testing.assert_array_equal(A.mask_of(picked), expected_pick)


def test_tiny_sam_mask_into_inpaint_and_composite_chain(comfy_server, sams_dir, artifacts_dir):
    box = [150, 180, 190, 200]  # x, y, w, h on example.png (768x512): the house
    grow, feather, fill = 6, 16, 0xFF0000
    prompt = {
        "1": A.load_image(A.EXAMPLE_IMAGE),
        "2": A.loader(A.SMALL_SAM),
        "3": A.tiny_sam(["2", 0], ["1", 0], box_prompt=json.dumps([box])),
        "4": A.mask_to_image(["3", 1]),
        "5": A.save_image(["4", 0], "tiny_mask"),
        "6": {"class_type": "GrowMask", "inputs": {"mask": ["3", 1], "expand": grow, "tapered_corners": True}},
        "7": {"class_type": "FeatherMask", "inputs": {"mask": ["6", 0], "left": feather, "top": feather,
                                                      "right": feather, "bottom": feather}},
        "8": A.mask_to_image(["7", 0]),
        "9": A.save_image(["8", 0], "feathered"),
        "10": {"class_type": "EmptyImage", "inputs": {"width": 768, "height": 512, "batch_size": 1, "color": fill}},
        "11": {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["1", 0], "source": ["10", 0], "x": 0,
                                                               "y": 0, "resize_source": False, "mask": ["7", 0]}},
        "12": A.save_image(["11", 0], "composite"),
        # inpaint-style: the grown mask becomes the latent's noise mask
        "13": {"class_type": "EmptyLatentImage", "inputs": {"width": 768, "height": 512, "batch_size": 1}},
        "14": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["13", 0], "mask": ["6", 0]}},
        "15": {"class_type": "SamKitTestProbeNoiseMask", "inputs": {"samples": ["14", 0]}},
        "16": A.mask_to_image(["15", 0]),
        "17": A.save_image(["16", 0], "noise_mask"),
        "18": A.save_image(["3", 0], "tiny_image"),
    }
    entry = comfy_server.run_ok(prompt, timeout=240.0)
    mask = A.mask_of(comfy_server.saved_image(entry, "5"))
    feathered = comfy_server.saved_image(entry, "9")[..., 0].astype(np.float64) / 255.0
    composite = comfy_server.saved_image(entry, "12").astype(np.float64)
    noise_mask = A.mask_of(comfy_server.saved_image(entry, "17"))
    _keep(artifacts_dir, "integration_tiny_sam_overlay.png", comfy_server.saved_image(entry, "18"))
    _keep(artifacts_dir, "integration_composite.png", composite.astype(np.uint8))

    from comfyui_sam_kit.nodes.tiny_sam import SamKitTinySAM

    image = _input_image(comfy_server, A.EXAMPLE_IMAGE)
    _img, own_mask, _objects, _boxes = SamKitTinySAM().run(
        _in_process(sams_dir, A.SMALL_SAM), image, 1024, 0.4, 0.9, json.dumps([box]), "[[0,0]]", "[0]")
    own = own_mask[0].numpy() > 0.5
    # Same code and weights, but another process (thread count, BLAS blocking): a logit that sits
    # on the threshold may round the other way, so a handful of edge pixels may differ, no more.
    differing = float((mask != own).mean())
    assert differing <= 1e-4, f"the saved Tiny SAM mask differs from the pack's own run in {differing:.4%} of pixels"
    assert 0.001 < mask.mean() < 0.9, f"degenerate mask (coverage {mask.mean():.4f}): the chain proves nothing"

    expected_grown = _grow(own, grow)
    assert expected_grown.sum() > own.sum()
    np.testing.assert_array_equal(noise_mask, expected_grown, err_msg="SetLatentNoiseMask did not get the grown mask")
    inner = np.zeros_like(own)
    inner[feather:-feather, feather:-feather] = True
    np.testing.assert_array_equal(feathered[inner] > 0.5, expected_grown[inner])
    assert (feathered <= expected_grown + 1e-6).all()

    original = A.read_png(comfy_server.base_dir / "input" / A.EXAMPLE_IMAGE).astype(np.float64)
    red = np.array([255.0, 0.0, 0.0])
    expected = feathered[..., None] * red + (1 - feathered[..., None]) * original
    assert np.abs(composite - expected).max() <= 3, "ImageCompositeMasked did not blend by the feathered Tiny SAM mask"
    np.testing.assert_array_equal(composite[~expected_grown], original[~expected_grown])


def test_second_run_of_a_prompt_loads_no_model(comfy_server):
    prompt = {
        "1": A.load_image(A.SCENE_IMAGE),
        "2": A.loader(A.CACHE_PROBE_SAM),
        "3": A.tiny_sam(["2", 0], ["1", 0], point_prompt="[[60,60]]", point_label="[1]"),
        "4": A.mask_to_image(["3", 1]),
        "5": A.save_image(["4", 0], "cache_probe"),
    }
    line = f"SAM Kit: loading {A.CACHE_PROBE_SAM}"
    assert comfy_server.log_text().count(line) == 0
    first = comfy_server.run_ok(prompt, timeout=240.0)
    assert comfy_server.log_text().count(line) == 1, "the first run did not log its model load"
    second = comfy_server.run_ok(prompt, timeout=240.0)
    # --cache-none: ComfyUI ran the loader node again; only the pack's cache can skip the load
    assert "2" not in comfyui.cached_nodes(second)
    assert comfy_server.log_text().count(line) == 1, "the second run of the same prompt loaded the model again"
    np.testing.assert_array_equal(comfy_server.saved_image(first, "5"), comfy_server.saved_image(second, "5"))


def test_interrupt_during_a_long_run_leaves_the_server_healthy(comfy_server):
    # minutes uninterrupted; the pack checks for an interrupt between batches: it must stop in seconds
    long_prompt = A.long_seg_map_prompt("interrupted")
    prompt_id = comfy_server.queue_prompt(long_prompt)
    comfy_server.wait_until_running(prompt_id)
    time.sleep(4.0)  # loading the image and the small model takes well under that: the seg map is at work
    asked = time.monotonic()
    comfy_server.interrupt()
    entry = comfy_server.wait_for_history(prompt_id, timeout=120)
    stopped_after = time.monotonic() - asked
    messages = comfyui.status_messages(entry)
    assert "execution_interrupted" in messages, json.dumps(entry["status"])[:2000]
    assert messages["execution_interrupted"]["node_id"] == "3", "the interrupt did not land inside the seg map node"
    assert stopped_after < 20, f"the seg map node took {stopped_after:.1f} s to notice the interrupt"
    assert comfy_server.alive()
    assert comfy_server.queue() == {"queue_running": [], "queue_pending": []}

    quick = {"1": A.load_image(A.SCENE_IMAGE), "2": A.loader(A.SMALL_SAM),
             "3": A.seg_map(["2", 0], ["1", 0], points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0),
             "4": A.save_image(["3", 0], "after_interrupt")}
    entry = comfy_server.run_ok(quick, timeout=240.0)
    assert comfy_server.saved_image(entry, "4").shape == (256, 256, 3)


def test_fastsam_checkpoint_runs_inside_comfyui(comfy_server, sams_dir):
    """FastSAM goes through ultralytics, loaded under ComfyUI's own torch settings: it must load and run there."""
    settings = dict(size=256, confidence=0.0, iou=0.9, box_prompt="[[0,0,0,0]]", point_prompt="[[0,0]]", point_label="[0]")
    prompt = {"1": A.load_image(A.SCENE_IMAGE), "2": A.loader(A.RANDOM_FASTSAM),
              "3": A.tiny_sam(["2", 0], ["1", 0], **settings),
              "4": A.mask_to_image(["3", 1]), "5": A.save_image(["4", 0], "fastsam_mask"),
              "6": A.seg_map(["2", 0], ["1", 0]), "7": A.save_image(["6", 0], "fastsam_segmap")}
    entry = comfy_server.run_ok(prompt, timeout=240.0)
    assert f"SAM Kit: loading {A.RANDOM_FASTSAM}" in comfy_server.log_text()
    mask = A.mask_of(comfy_server.saved_image(entry, "5"))

    from comfyui_sam_kit.nodes.tiny_sam import SamKitTinySAM

    _img, own_mask, _objects, _boxes = SamKitTinySAM().run(
        _in_process(sams_dir, A.RANDOM_FASTSAM), _input_image(comfy_server, A.SCENE_IMAGE), *settings.values())
    np.testing.assert_array_equal(mask, own_mask[0].numpy() > 0.5)
    assert comfy_server.saved_image(entry, "7").shape == (256, 256, 3)


# ---------------------------------------------------------------------------- a model that segments
def test_trained_model_segments_the_clicked_shape_through_comfyui(comfy_server, sams_dir):
    if not (sams_dir / A.TRAINED_SAM).is_file():
        pytest.skip(f"tests/testmodels/{A.TRAINED_SAM} (the trained test SAM) is not in this checkout")
    from testsupport.trained import interior_point, mask_iou

    scene = A.scene()
    ious = []
    for i in range(len(scene)):
        x, y = interior_point(scene.masks[i])
        prompt = {"1": A.load_image(A.SCENE_IMAGE), "2": A.loader(A.TRAINED_SAM),
                  "3": A.tiny_sam(["2", 0], ["1", 0], point_prompt=f"[[{x},{y}]]", point_label="[1]", confidence=0.0),
                  "4": A.mask_to_image(["3", 1]), "5": A.save_image(["4", 0], f"trained_{i}")}
        entry = comfy_server.run_ok(prompt, timeout=240.0)
        ious.append(mask_iou(A.mask_of(comfy_server.saved_image(entry, "5")), scene.masks[i]))
    # the fixture's bar (tests/test_testmodel_sam.py: mean IoU >= 0.70 for one click per shape)
    assert np.mean(ious) >= 0.70, f"IoU per shape {np.round(ious, 3).tolist()}"
