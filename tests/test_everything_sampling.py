"""Everything mode's ``sampling`` choice (grid, hierarchical, object-aware) on the trained fixtures:
shapes found, determinism, prompts decoded, batches and crops, interrupt and progress, and every
entry point (seg map node, Tiny SAM, CLI, self-hosted server) taking it.

The ground-truth quality harness (recall bars over all held-out scenes) is tests/test_everything_quality.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_sam_kit.nodes.seg_map import SamKitSegmentationMap
from comfyui_sam_kit.nodes.tiny_sam import SamKitTinySAM
from comfyui_sam_kit.samkit import loader, runtime
from comfyui_sam_kit.samkit.automask import AutoMaskSettings, FilterCounts, generate_segments
from comfyui_sam_kit.samkit.automask_sampling import fastsam_proposals, residual_grid
from comfyui_sam_kit.samkit.sampling_params import DEFAULT_SAMPLING, SAMPLING
from comfyui_sam_kit.samkit.tiny_sam_job import TinySamRequest, segment_with_prompts
from testsupport.trained import EVERYTHING_SETTINGS, TRAINED_SAM_PATH, heldout_scene
from testsupport.trained_fastsam import TRAINED_FASTSAM_PATH, best_ious

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = AutoMaskSettings(**EVERYTHING_SETTINGS)
SCENES = range(4)  # held-out scenes 0-3 at 256x256 (the fixtures' training size): 20 shapes
# Measured on those 20 shapes (matched at IoU >= 0.7), proposals at imgsz 256: grid 17, hierarchical
# 17 (1404 decoded outputs), object-aware 17 (805: its 40 boxes and a residual point pass; boxes alone
# found 13), the grid 3072. The bars leave one shape of slack. The ground-truth bars over 45 shapes are
# tests/test_everything_quality.py's.
RECALL_BAR = {"grid": 0.80, "hierarchical": 0.80, "object-aware": 0.80}


@pytest.fixture(scope="module")
def sam():
    return loader.load_model(str(TRAINED_SAM_PATH), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def fastsam():
    return loader.load_model(str(TRAINED_FASTSAM_PATH), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def proposals(fastsam):
    return fastsam_proposals(fastsam, size=256)  # the FastSAM fixture's training size


def _segments(sam, mode, image, proposals, settings=SETTINGS, counts=None):
    return generate_segments(sam.runner, image, settings, counts, sampling=mode, proposals=proposals)


@pytest.fixture(scope="module")
def runs(sam, proposals):
    """Per mode: (segments, counts) on each scene."""
    out = {}
    for mode in SAMPLING:
        out[mode] = []
        for i in SCENES:
            counts = FilterCounts()
            out[mode].append((_segments(sam, mode, heldout_scene(i).image, proposals, counts=counts), counts))
    return out


@pytest.mark.parametrize("mode", SAMPLING)
def test_each_mode_finds_the_heldout_shapes(runs, mode):
    matched = np.concatenate([best_ious(segs.masks.numpy(), heldout_scene(i).masks) >= 0.7
                              for i, (segs, _) in zip(SCENES, runs[mode])])
    assert matched.mean() >= RECALL_BAR[mode], f"{mode}: {matched.sum()}/{len(matched)} shapes found"


def test_hierarchical_decodes_far_fewer_prompts_than_grid(runs):
    # Measured: 1404 decoded outputs against the grid's 3072 (0.46; 1224 with CONFIDENT_QUANTILE 0.6); the skipped dense points lay
    # inside objects the sparse pass had already found. 0.5 is the "2x fewer".
    grid = sum(c.candidates for _, c in runs["grid"])
    hierarchical = sum(c.candidates for _, c in runs["hierarchical"])
    assert hierarchical <= 0.5 * grid, (hierarchical, grid)


def test_object_aware_decodes_one_output_per_box_then_uncovered_residual_points(runs, proposals):
    boxes = sum(len(proposals(heldout_scene(i).image)) for i in SCENES)
    assert boxes > len(SCENES)  # several objects per scene
    decoded = sum(c.candidates for _, c in runs["object-aware"])
    # one output per box, then three (SAM's multimask outputs) per residual point; points inside the
    # core of a kept box mask are skipped, so fewer than the full residual grid's
    residual = decoded - boxes
    assert residual % 3 == 0 and 0 < residual < 3 * len(residual_grid(SETTINGS.points_per_side)) * len(SCENES)
    # measured 805 decoded outputs against the grid's 3072 (0.26)
    assert decoded <= 0.35 * sum(c.candidates for _, c in runs["grid"])


@pytest.mark.parametrize("mode", SAMPLING)
def test_results_are_deterministic(sam, proposals, runs, mode):
    again = _segments(sam, mode, heldout_scene(0).image, proposals)
    first = runs[mode][0][0]
    assert len(first) > 0
    assert torch.equal(again.masks, first.masks)
    assert torch.equal(again.boxes, first.boxes) and torch.equal(again.predicted_iou, first.predicted_iou)


def _batch(*scenes):
    return torch.cat([torch.from_numpy(s.image).float()[None] / 255 for s in scenes])


@pytest.mark.parametrize("mode", SAMPLING)
def test_node_batch_with_crop_layers_is_each_image_on_its_own(sam, fastsam, mode):
    # small images and an 8x8 grid keep five crops per image affordable on a CPU. Scenes 4 and 5 at
    # 200x300: the node runs the FastSAM fixture at its training size (256), where it proposes 13 and 5
    # boxes on these two.
    one, two = heldout_scene(4, 200, 300), heldout_scene(5, 200, 300)
    widgets = dict(points_per_side=8, pred_iou_thresh=0.5, stability_score_thresh=0.7, min_mask_region_area=0,
                   crop_n_layers=1, seed=0, sampling=mode, proposal_model=fastsam)
    node = SamKitSegmentationMap()
    seg_map, segments, coverage = node.run(sam, _batch(one, two), **widgets)
    singles = [node.run(sam, _batch(s), **widgets) for s in (one, two)]
    assert torch.equal(seg_map, torch.cat([s[0] for s in singles]))
    assert torch.equal(segments, torch.cat([s[1] for s in singles]))
    assert coverage[0].any() and coverage[1].any()


def test_default_is_one_source(sam):
    spec = SamKitSegmentationMap.INPUT_TYPES()["optional"]["sampling"]
    assert spec[0] == list(SAMPLING) and spec[1]["default"] == DEFAULT_SAMPLING
    assert SamKitTinySAM.INPUT_TYPES()["optional"]["sampling"][1]["default"] == DEFAULT_SAMPLING
    assert TinySamRequest().sampling == DEFAULT_SAMPLING


def test_object_aware_without_a_proposal_model_says_what_to_connect(sam):
    image = _batch(heldout_scene(0, 64, 64))
    with pytest.raises(ValueError, match="proposal_model input.*--proposal-model"):
        SamKitSegmentationMap().run(sam, image, 8, 0.5, 0.7, 0, 0, 0, sampling="object-aware")
    with pytest.raises(ValueError, match="proposal_model input"):
        SamKitTinySAM().run(sam, image, 1024, 0.4, 0.9, "[[0,0,0,0]]", "[[0,0]]", "[0]", sampling="object-aware")
    with pytest.raises(ValueError, match="proposal model"):
        generate_segments(sam.runner, heldout_scene(0, 64, 64).image, SETTINGS, sampling="object-aware")
    with pytest.raises(ValueError, match="sampling must be one of grid, hierarchical, object-aware"):
        SamKitSegmentationMap().run(sam, image, 8, 0.5, 0.7, 0, 0, 0, sampling="dense")
    with pytest.raises(ValueError, match="FastSAM"):  # a SAM model cannot propose boxes
        SamKitSegmentationMap().run(sam, image, 8, 0.5, 0.7, 0, 0, 0, sampling="object-aware", proposal_model=sam)


def test_tiny_sam_without_prompt_takes_its_objects_from_the_proposals(sam):
    calls = []

    def boxes(crop):
        calls.append(crop.shape)
        return np.array([[20.0, 20.0, 120.0, 120.0]])

    scene = heldout_scene(0)
    request = TinySamRequest(sampling="object-aware", confidence=0.0)
    result = segment_with_prompts(sam, _batch(scene, scene), request, proposals=boxes)
    assert calls == [(256, 256, 3)] * 2  # once per image, on its pixels
    assert len(result.boxes) == 2 and result.object_masks.shape[1:] == (256, 256)


@pytest.mark.parametrize("mode", SAMPLING)
def test_interrupt_and_progress_in_every_mode(sam, proposals, mode):
    seen, checks = [], []

    class Recorder(runtime.Progress):
        def set(self, value):
            super().set(value)
            seen.append((self.value, self.total))

    def stop_at(n):
        def check():
            checks.append(1)
            if len(checks) >= n:
                raise runtime.Interrupted()
        return check

    image = heldout_scene(3).image
    settings = AutoMaskSettings(**{**EVERYTHING_SETTINGS, "crop_n_layers": 1, "points_per_batch": 64})
    previous = (runtime.hooks.progress, runtime.hooks.check_interrupt)
    try:
        runtime.install(progress=lambda total, label="": Recorder(total, label))
        _segments(sam, mode, image, proposals, settings)
        values = [v for v, _ in seen]
        assert values == sorted(values) and values[-1] == seen[-1][1], "progress must only grow, to its total"
        assert len(set(values)) >= 5  # it moves: at least once per crop
        checks.clear()
        runtime.install(check_interrupt=stop_at(1))  # the first check, before any model work
        with pytest.raises(runtime.Interrupted):
            _segments(sam, mode, image, proposals, settings)
        checks.clear()
        runtime.install(check_interrupt=stop_at(3))  # mid-way, inside the crops
        with pytest.raises(runtime.Interrupted):
            _segments(sam, mode, image, proposals, settings)
        assert len(checks) == 3
    finally:
        runtime.install(progress=previous[0], check_interrupt=previous[1])


def _cli(*args, env_dir):
    env = {"SAMKIT_MODELS_DIR": str(env_dir), "PATH": "/usr/bin:/bin", "YOLO_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "samkit", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_cli_takes_sampling_and_a_proposal_model(tmp_path, _isolated_model_dir):
    from PIL import Image

    Image.fromarray(heldout_scene(0, 128, 128).image).save(tmp_path / "in.png")
    common = ("segmap", str(tmp_path / "in.png"), "--model", str(TRAINED_SAM_PATH), "--device", "cpu",
              "--points-per-side", "8", "--pred-iou-thresh", "0.5", "--stability-score-thresh", "0.7",
              "--out", str(tmp_path / "out"))
    done = _cli(*common, "--sampling", "object-aware", env_dir=_isolated_model_dir)
    assert done.returncode == 2 and "--proposal-model" in done.stderr and "Traceback" not in done.stderr
    done = _cli(*common, "--sampling", "object-aware", "--proposal-model", str(TRAINED_FASTSAM_PATH),
                env_dir=_isolated_model_dir)
    assert done.returncode == 0, done.stderr
    assert np.asarray(Image.open(tmp_path / "out" / "in_segmap.png")).any()
    done = _cli(*common, "--sampling", "dense", env_dir=_isolated_model_dir)
    assert done.returncode == 2 and "invalid choice: 'dense'" in done.stderr


def test_server_takes_sampling_per_request_and_its_proposal_model(sam, fastsam):
    import httpx

    from comfyui_sam_kit.samkit.fal import schemas
    from comfyui_sam_kit.samkit.fal.handlers import segmentation_map_handler
    from comfyui_sam_kit.samkit.fal.remote import encode_input_png
    from testsupport.fal_server import SERVER_KEY, serve

    settings = AutoMaskSettings(points_per_side=8, pred_iou_thresh=0.5, stability_score_thresh=0.7)
    uri = schemas.png_data_uri(encode_input_png(_batch(heldout_scene(0, 128, 128))[0])[0])
    with_proposals = {schemas.SEGMENTATION_MAP: segmentation_map_handler(sam, settings, proposals=fastsam)}
    without = {schemas.SEGMENTATION_MAP: segmentation_map_handler(sam, settings)}
    for handlers, expect in ((with_proposals, "COMPLETED"), (without, "--proposal-model")):
        with serve(handlers) as (_server, base, _f), httpx.Client(
                base_url=base, headers={"Authorization": f"Key {SERVER_KEY}"}, timeout=10, trust_env=False) as http:
            bad = http.post(f"/{schemas.SEGMENTATION_MAP}", json={"image_url": uri, "sampling": "dense"})
            assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "sampling"]
            sub = http.post(f"/{schemas.SEGMENTATION_MAP}", json={"image_url": uri, "sampling": "object-aware"}).json()
            for _ in range(600):  # bounded: 600 x 50 ms
                status = http.get(sub["status_url"]).json()
                if status["status"] == "COMPLETED":
                    break
                runtime_sleep(0.05)
            answer = http.get(sub["response_url"])
            if expect == "COMPLETED":
                assert answer.status_code == 200 and answer.json()["image"]["width"] == 128
                assert any("object-aware" in e["message"] for e in http.get(sub["status_url"], params={"logs": "1"}).json()["logs"])
            else:
                assert answer.status_code == 422 and expect in answer.text


def runtime_sleep(seconds):
    import time

    time.sleep(seconds)
