"""The command line (which loads through samkit.loader, as the self-hosted server does) runs SAM 2.1."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from testsupport.sam2_checkpoints import save_sam2_checkpoint, tiny_state_dict

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, env_dir):
    env = {"SAMKIT_MODELS_DIR": str(env_dir), "PATH": "/usr/bin:/bin", "YOLO_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "samkit", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_segmap_and_tinysam_run_a_renamed_sam2_file(tmp_path, _isolated_model_dir):
    save_sam2_checkpoint(tiny_state_dict(seed=0, version="2.1", spread=True), _isolated_model_dir / "mine.pth")
    g = np.random.default_rng(0)
    img = np.kron(g.integers(0, 255, (5, 7, 3)), np.ones((10, 10, 1))).astype("uint8")  # 50x70, blocks of colour
    Image.fromarray(img).save(tmp_path / "in.png")
    out = tmp_path / "out"
    done = _cli("tinysam", str(tmp_path / "in.png"), "--model", "mine.pth", "--device", "cpu", "--point-prompt", "[[20,20]]",
                "--point-label", "[1]", "--confidence", "0", "--out", str(out), env_dir=_isolated_model_dir)
    assert done.returncode == 0, done.stderr
    tinted = np.asarray(Image.open(out / "in_tinysam.png"))
    assert tinted.shape == (50, 70, 3) and (tinted != img).any()  # an object was found and tinted
    done = _cli("segmap", str(tmp_path / "in.png"), "--model", "mine.pth", "--device", "cpu", "--points-per-side", "2",
                "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--masks", "--out", str(out),
                env_dir=_isolated_model_dir)
    assert done.returncode == 0, done.stderr
    assert np.asarray(Image.open(out / "in_segmap.png")).shape == (50, 70, 3)
    assert sorted(p.name for p in (out / "in_segments").iterdir())[0] == "000.png"
