"""The precision policy (``samkit/precision.py``): its choices, its fp32 parts, and every job entering it.

Issue 13: a half-precision SAM-family model failed in the seg map job (and so in the server's
seg-map job and the CLI), because only Tiny SAM set up autocast. Here the issue's own bf16
reproduction runs, the server and the CLI run a bf16 model, and each fp32 part of the policy is
checked to be in place and to matter (measured against what the pack did before).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_sam_kit.samkit import loader, precision
from comfyui_sam_kit.samkit.automask import AutoMaskSettings
from comfyui_sam_kit.samkit.sam_transforms import encode_image
from comfyui_sam_kit.samkit.point_decoder import decode_point_tokens
from comfyui_sam_kit.samkit.segmap import segmentation_map
from comfyui_sam_kit.samkit.tiny_sam_job import TinySamRequest, segment_with_prompts
from testsupport.trained import TRAINED_SAM_PATH, heldout_scene, interior_point
from testsupport.trained_fastsam import TRAINED_FASTSAM_PATH

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_SEGMAP = AutoMaskSettings(points_per_side=16, pred_iou_thresh=0.5, stability_score_thresh=0.7)


@pytest.fixture(scope="module")
def fp32():
    return loader.load_model(str(TRAINED_SAM_PATH), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def bf16():
    return loader.load_model(str(TRAINED_SAM_PATH), device="cpu", precision="bf16")


def _tensor(image_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image_u8).float()[None] / 255.0


def test_the_issues_bf16_reproduction_runs(monkeypatch):
    monkeypatch.setenv("SAMKIT_MODELS_DIR", str(ROOT))  # the issue's relative path, found in a model folder
    model = loader.load_model("tests/testmodels/sam_shapes.pth", device="cpu", precision="bf16")
    result = segmentation_map(model, torch.rand(1, 128, 160, 3), AutoMaskSettings(points_per_side=4), 0)
    assert model.dtype == torch.bfloat16
    assert result.seg_map.shape == (1, 128, 160, 3) and result.seg_map.dtype == torch.float32


def test_choices_map_to_dtypes_and_fp16_on_the_cpu_names_what_to_choose(monkeypatch):
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert precision.resolve_dtype("auto", cpu) == torch.float32
    assert precision.resolve_dtype("bf16", cpu) == torch.bfloat16
    assert precision.resolve_dtype("auto", mps) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.resolve_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.resolve_dtype("auto", cuda) == torch.float16
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU; choose 'auto', 'fp32' or 'bf16'"):
        precision.resolve_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, fp16, bf16, not 'half'"):
        precision.resolve_dtype("half", cpu)


def test_fastsam_runs_fp16_on_gpus_and_fp32_on_the_cpu():
    mapping = {(d, dev): precision.fastsam_dtype(d, torch.device(dev))
               for d in (torch.float32, torch.float16, torch.bfloat16) for dev in ("cpu", "cuda", "mps")}
    assert mapping == {(torch.float32, "cpu"): torch.float32, (torch.float32, "cuda"): torch.float32,
                       (torch.float32, "mps"): torch.float32, (torch.float16, "cpu"): torch.float32,
                       (torch.float16, "cuda"): torch.float16, (torch.float16, "mps"): torch.float16,
                       (torch.bfloat16, "cpu"): torch.float32, (torch.bfloat16, "cuda"): torch.float16,
                       (torch.bfloat16, "mps"): torch.float16}
    assert precision.fastsam_half_kwargs(torch.float32) == {}
    assert precision.fastsam_half_kwargs(torch.float16) == {"quantize": 16}  # ultralytics 8.4; `half` is deprecated
    model = loader.load_model(str(TRAINED_FASTSAM_PATH), device="cpu", precision="bf16")
    assert model.dtype == torch.float32  # what runs, visible on the model (and logged at load)
    assert loader.load_model(str(TRAINED_FASTSAM_PATH), device="cpu", precision="fp32") is model  # one load


def test_a_half_model_keeps_its_parameter_names_and_only_the_fp32_parts_in_fp32(fp32, bf16):
    assert list(bf16.module.state_dict()) == list(fp32.module.state_dict())
    fp32_parts = ("prompt_encoder.pe_layer.", "mask_decoder.iou_prediction_head.", "pixel_mean", "pixel_std")
    for name, tensor in bf16.module.state_dict().items():
        expected = torch.float32 if name.startswith(fp32_parts) else torch.bfloat16
        assert tensor.dtype == expected, name
    assert torch.equal(bf16.module.pixel_mean, fp32.module.pixel_mean)  # 123.675, not bf16's 123.5


def test_positional_encoding_is_fp32_in_a_bf16_model_and_bf16_would_blur_it(fp32, bf16):
    with precision.for_model(bf16):
        dense = bf16.runner.prompt_encoder.get_dense_pe()
    assert dense.dtype == torch.float32 and torch.equal(dense, fp32.runner.prompt_encoder.get_dense_pe())
    # what the pack did before (buffer cast to bf16, encoded under autocast): measured max error
    # 0.18 (of +-1) on this fixture's 16x16 grid; sin/cos of arguments up to ~30 rad in bf16
    from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

    old = PositionEmbeddingRandom(dense.shape[1] // 2).to(torch.bfloat16)
    old.positional_encoding_gaussian_matrix.copy_(fp32.runner.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        blurred = old(bf16.runner.prompt_encoder.image_embedding_size)[None].float()
    assert (blurred - dense).abs().max() > 0.1


def test_predicted_iou_comes_out_fp32_without_bf16_ties(bf16):
    scene = heldout_scene(20, 256, 256)
    sam = bf16.runner
    xy = torch.stack(torch.meshgrid(torch.arange(8, 256, 16), torch.arange(8, 256, 16), indexing="xy"), -1).reshape(-1, 1, 2)
    with precision.for_model(bf16), torch.inference_mode():
        features = encode_image(sam, scene.image).features
        sparse, _ = sam.prompt_encoder(points=(xy.float(), torch.ones(len(xy), 1, dtype=torch.int)), boxes=None, masks=None)
        iou = decode_point_tokens(sam, features, sparse.to(features.dtype)).iou_pred
    assert iou.dtype == torch.float32
    # a bf16 head rounds to steps of 1/256 near 0.9: measured 530 distinct values among 768
    # predictions here, ties that decide NMS order and thresholds arbitrarily; fp32: all distinct
    assert len(torch.unique(iou)) == iou.numel()


def test_the_policy_sets_the_dtype_whatever_autocast_the_host_left_on(fp32, bf16):
    x = torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with precision.for_model(fp32):
            assert (x @ x).dtype == torch.float32
    with precision.for_model(bf16):
        assert (x @ x).dtype == torch.bfloat16
    assert (x @ x).dtype == torch.float32  # and nothing leaks out of the job


def test_bf16_seg_map_and_tiny_sam_run_through_the_nodes_like_fp32(fp32, bf16):
    from comfyui_sam_kit.nodes.seg_map import SamKitSegmentationMap
    from comfyui_sam_kit.nodes.tiny_sam import SamKitTinySAM

    scene = heldout_scene(21, 256, 256)
    image = _tensor(scene.image)
    settings = dict(points_per_side=16, pred_iou_thresh=0.5, stability_score_thresh=0.7, min_mask_region_area=0,
                    crop_n_layers=0, seed=0)
    maps = [SamKitSegmentationMap().run(m, image, **settings)[1] for m in (fp32, bf16)]
    assert maps[1].shape[0] > 1 and abs(maps[0].shape[0] - maps[1].shape[0]) <= 3  # the matrix's bound
    x, y = interior_point(scene.masks[0])
    widgets = dict(size=1024, confidence=0.0, iou=0.9, box_prompt="[[0,0,0,0]]", point_prompt=f"[[{x},{y}]]",
                   point_label="[1]")
    masks = [SamKitTinySAM().run(m, image, **widgets)[1][0] > 0.5 for m in (fp32, bf16)]
    inter, union = (masks[0] & masks[1]).sum(), (masks[0] | masks[1]).sum()
    assert float(inter / union) >= 0.90  # the matrix's per-click bound (measured minimum 0.973)


def test_the_servers_jobs_run_a_bf16_model_as_the_library_does(bf16, monkeypatch):
    # the server runs jobs on worker threads; autocast is per thread, so the job enters the policy there
    from comfyui_sam_kit.samkit.fal import remote, schemas
    from comfyui_sam_kit.samkit.fal.handlers import segmentation_map_handler, tiny_sam_handler
    from testsupport.fal_server import SERVER_KEY, serve

    scene = heldout_scene(20, 256, 256)
    image = _tensor(scene.image)
    x, y = interior_point(scene.masks[0])
    handlers = {schemas.TINY_SAM: tiny_sam_handler(bf16),
                schemas.SEGMENTATION_MAP: segmentation_map_handler(bf16, FIXTURE_SEGMAP)}
    with serve(handlers) as (_server, base, _faults):
        monkeypatch.setenv("SAMKIT_FAL_BASE_URL", base)
        monkeypatch.setenv("FAL_KEY", SERVER_KEY)
        served_map = remote.segmentation_map(image, timeout=120).seg_map
        served_click = remote.tiny_sam(image, confidence=0.0, point_prompt=[[x, y]], point_label=[1], timeout=120).mask
    local_map = segmentation_map(bf16, image, FIXTURE_SEGMAP, 0).seg_map
    local_click = segment_with_prompts(bf16, image, TinySamRequest(confidence=0.0, point_prompt=[[x, y]],
                                                                   point_label=[1])).mask
    assert torch.equal((served_map * 255).round(), (local_map * 255).round()) and local_map.any()
    assert torch.equal(served_click > 0.5, local_click > 0.5) and local_click.any()


def test_the_cli_runs_bf16_and_refuses_fp16_on_the_cpu_with_what_to_choose(tmp_path):
    scene = heldout_scene(20, 256, 256)
    Image.fromarray(scene.image).save(tmp_path / "in.png")
    env = {"SAMKIT_MODELS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "YOLO_OFFLINE": "1"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "samkit", *args, "--model", str(TRAINED_SAM_PATH), "--device",
                               "cpu", "--out", str(tmp_path / "out"), str(tmp_path / "in.png")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    done = cli("segmap", "--precision", "bf16", "--points-per-side", "8", "--pred-iou-thresh", "0.5",
               "--stability-score-thresh", "0.7")
    assert done.returncode == 0, done.stderr
    assert np.asarray(Image.open(tmp_path / "out" / "in_segmap.png")).any()
    x, y = interior_point(scene.masks[0])
    done = cli("tinysam", "--precision", "bf16", "--point-prompt", f"[[{x},{y}]]", "--point-label", "[1]",
               "--confidence", "0")
    assert done.returncode == 0, done.stderr
    assert np.asarray(Image.open(tmp_path / "out" / "in_mask.png"))[y, x] > 0
    done = cli("segmap", "--precision", "fp16")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "fp16 is not supported on the CPU; choose 'auto', 'fp32' or 'bf16'" in done.stderr
