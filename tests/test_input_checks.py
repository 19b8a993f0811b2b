"""What a fresh reviewer fed the pack and got a wrong answer for, each now a clear error or the
right value: IMAGE tensors that are not 0..1 floats, command-line arguments that used to be found
bad only after a model had loaded (or downloaded), and images a pixel thin, where the reference's
box NMS keeps one identical segment per grid point."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_sam_kit.samkit.automask import AutoMaskSettings
from comfyui_sam_kit.samkit.images import OVERSHOOT, as_image_batch
from comfyui_sam_kit.samkit.segmap import segmentation_map
from comfyui_sam_kit.samkit.loader import load_model
from testsupport.trained import TRAINED_SAM_PATH

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("image, says", [
    (torch.full((1, 8, 8, 3), float("nan")), "NaN or infinite"),
    (torch.full((1, 8, 8, 3), float("inf")), "NaN or infinite"),
    (torch.rand(1, 8, 8, 3) * 255, "divide by 255"),  # an image still in 0..255
    (torch.randint(0, 255, (1, 8, 8, 3)), "int64 tensor"),
    (torch.full((1, 8, 8, 3), -1.0), "from -1 to -1"),
])
def test_images_that_are_not_0_to_1_floats_are_refused_naming_the_input(image, says):
    with pytest.raises(ValueError, match=says) as err:
        as_image_batch(image, "image")
    assert str(err.value).startswith("image ")


def test_resampler_overshoot_is_accepted_and_clamped_like_comfyui():
    # bicubic/lanczos upscalers ring a few percent past 0 and 1; those images are fine
    image = torch.linspace(-OVERSHOOT / 2, 1 + OVERSHOOT / 2, 3 * 16).reshape(1, 4, 4, 3)
    assert torch.equal(as_image_batch(image), image)


def test_bool_settings_are_refused_not_read_as_numbers():
    with pytest.raises(ValueError, match="points_per_side must be a number, not True"):
        AutoMaskSettings(points_per_side=True).validate()


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (1, 1, 40, 3), (1, 40, 1, 3)])
def test_a_pixel_thin_image_gives_each_segment_once(shape):
    # Zero-area boxes never suppress each other in box NMS (IoU 0/0): before, every one of the
    # 16 grid points' masks survived (48 segments on each shape, the same pixels over and over)
    model = load_model(TRAINED_SAM_PATH, device="cpu")
    torch.manual_seed(0)
    result = segmentation_map(model, torch.rand(*shape), AutoMaskSettings(points_per_side=4, pred_iou_thresh=0,
                                                                          stability_score_thresh=0), 0)
    n = result.found[0]
    masks = result.segments[:n].flatten(1)
    assert n >= 1
    for i in range(n):
        for j in range(i):
            assert not torch.equal(masks[i], masks[j]), f"segments {j} and {i} are the same mask"


def _cli(*args, cwd: Path):
    env = {"SAMKIT_MODELS_DIR": str(cwd / "models"), "PATH": "/usr/bin:/bin", "YOLO_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "samkit", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("case", ["missing image", "empty folder", "bad out"])
def test_cli_refuses_bad_arguments_before_any_model_work(tmp_path, case):
    # the default model (mobile_sam.pt) is not there: loading it would try a download and fail with
    # an offline message; a bad argument must be reported first, with exit code 2
    (tmp_path / "empty").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), "uint8")).save(tmp_path / "in.png")
    (tmp_path / "file").write_text("not a folder")
    args = {"missing image": [str(tmp_path / "missing.png")],
            "empty folder": [str(tmp_path / "empty")],
            "bad out": [str(tmp_path / "in.png"), "--out", str(tmp_path / "file" / "out")]}[case]
    done = _cli("segmap", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "Traceback" not in done.stderr
    assert "download" not in line and "mobile_sam" not in line, line
    assert {"missing image": "missing.png", "empty folder": "no images", "bad out": "--out"}[case] in line
