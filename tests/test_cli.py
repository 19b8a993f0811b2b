"""The headless CLI runs the same code on image files and writes complete PNGs."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from testsupport.checkpoints import build_small_sam, save_sam_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, env_dir):
    env = {"SAMKIT_MODELS_DIR": str(env_dir), "PATH": "/usr/bin:/bin", "YOLO_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "samkit", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_segmap_and_tinysam_write_maps_and_masks(tmp_path, _isolated_model_dir):
    save_sam_checkpoint(build_small_sam(), _isolated_model_dir / "small.pth")
    img = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype("uint8")
    Image.fromarray(img).save(tmp_path / "in.png")
    out = tmp_path / "out"
    done = _cli("segmap", str(tmp_path / "in.png"), "--model", "small.pth", "--device", "cpu", "--points-per-side", "4",
                "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--masks", "--out", str(out), env_dir=_isolated_model_dir)
    assert done.returncode == 0, done.stderr
    seg = np.asarray(Image.open(out / "in_segmap.png"))
    assert seg.shape == (50, 70, 3) and seg.any()
    assert np.asarray(Image.open(out / "in_coverage.png")).shape == (50, 70)
    assert sorted(p.name for p in (out / "in_segments").iterdir())[0] == "000.png"
    assert not list(out.glob(".*.part"))
    done = _cli("tinysam", str(tmp_path / "in.png"), "--model", "small.pth", "--device", "cpu", "--point-prompt", "[[10,10]]",
                "--point-label", "[1]", "--confidence", "0", "--out", str(out), env_dir=_isolated_model_dir)
    assert done.returncode == 0, done.stderr
    assert np.asarray(Image.open(out / "in_tinysam.png")).shape == (50, 70, 3)


def test_bad_model_name_is_a_clear_error_not_a_traceback(tmp_path, _isolated_model_dir):
    Image.fromarray(np.zeros((8, 8, 3), "uint8")).save(tmp_path / "in.png")
    done = _cli("segmap", str(tmp_path / "in.png"), "--model", "nope.pth", "--out", str(tmp_path), env_dir=_isolated_model_dir)
    assert done.returncode == 2
    assert "error: model 'nope.pth' was not found" in done.stderr and "Traceback" not in done.stderr
