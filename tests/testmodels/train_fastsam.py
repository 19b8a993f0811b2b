"""Train the FastSAM test fixture: a tiny YOLOv8-seg that really segments shapes scenes.

FastSAM is ultralytics' YOLOv8-seg with one class, saved by ultralytics' trainer. This trains the
same architecture (``yolov8-seg.yaml``, one class, a small width) on ``shapes.make_scene`` scenes
written as a YOLO-seg dataset, with ultralytics' own trainer, and copies the trainer's checkpoint,
so ``ultralytics.FastSAM(path)`` loads it like FastSAM-s.pt.

    python tests/testmodels/train_fastsam.py                 # writes tests/testmodels/fastsam_shapes.pt
    python tests/testmodels/train_fastsam.py --out /tmp/x.pt --epochs 2

CPU only, seeded (``deterministic=True``), offline (no downloads, no plots).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):
    sys.path.insert(0, str(HERE.parent))  # run as a script: make `testmodels` importable
from testmodels.shapes import TRAIN_SEEDS, make_scene  # noqa: E402

DEFAULT_OUT = HERE / "fastsam_shapes.pt"
DEFAULT_SEED = 0
DEFAULT_EPOCHS = 24
IMGSZ = 256
CLASS_NAMES = {0: "object"}  # FastSAM is one-class: every instance is an "object"

# FastSAM is YOLOv8-seg (FastSAM-s = the "s" scale, FastSAM-x = "x"); the fixture is the same
# architecture at a smaller width so it trains on two CPU cores in minutes.
MODEL_SCALE = (0.33, 0.125, 1024)  # depth, width, max channels


def _keep_ultralytics_offline(config_dir: Path | None = None) -> None:
    """Before ultralytics is imported: no DNS probe/downloads, settings file not in $HOME."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if "YOLO_CONFIG_DIR" not in os.environ:
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir or Path(tempfile.gettempdir()) / "samkit-ultralytics")


def mask_polygon(mask: np.ndarray) -> np.ndarray:
    """Outer contour of a one-piece mask as [K,2] float (x, y) pixel coordinates."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contour = max(contours, key=cv2.contourArea)[:, 0, :]
    return contour.astype(np.float64)


def scene_sizes(rng: np.random.Generator) -> tuple[int, int]:
    """Mostly square scenes at the model's size; some larger / non-square (letterboxed in training)."""
    u = rng.uniform()
    if u < 0.6:
        return IMGSZ, IMGSZ
    long = int(rng.integers(IMGSZ, int(IMGSZ * 1.5) + 1))
    short = int(rng.integers(int(long * 0.55), long + 1))
    return (long, short) if rng.uniform() < 0.5 else (short, long)


def write_dataset(root: Path, n_train: int, n_val: int, seed: int) -> Path:
    """A YOLO-seg dataset (images/, labels/ with normalised polygons, data.yaml); returns the yaml."""
    import cv2

    rng = np.random.default_rng(seed)
    base = seed * 100_003 + 7
    for split, start, count in (("train", 0, n_train), ("val", n_train, n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + count):
            h, w = scene_sizes(rng)
            scene = make_scene(TRAIN_SEEDS[(base + i) % len(TRAIN_SEEDS)], h, w)
            name = f"{i:05d}"
            # PNG keeps the exact pixels; cv2 writes BGR, so flip from the scene's RGB
            cv2.imwrite(str(root / "images" / split / f"{name}.png"), scene.image[..., ::-1])
            lines = []
            for m in scene.masks:
                poly = mask_polygon(m) / np.array([w, h], dtype=np.float64)
                lines.append("0 " + " ".join(f"{v:.5f}" for v in poly.reshape(-1)))
            (root / "labels" / split / f"{name}.txt").write_text("\n".join(lines) + "\n")
    data_yaml = root / "data.yaml"
    data_yaml.write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: {CLASS_NAMES[0]}\n"
    )
    return data_yaml


def model_config() -> dict:
    """ultralytics' own yolov8-seg.yaml, one class, at the fixture's scale."""
    import ultralytics
    from ultralytics.utils import YAML

    cfg = YAML.load(Path(ultralytics.__file__).parent / "cfg" / "models" / "v8" / "yolov8-seg.yaml")
    cfg["nc"] = 1
    cfg["scales"] = {"t": list(MODEL_SCALE)}
    cfg["scale"] = "t"
    return cfg


def train(out: Path, seed: int = DEFAULT_SEED, epochs: int = DEFAULT_EPOCHS, minutes: float | None = None,
          n_train: int = 400, n_val: int = 40, batch: int = 16, workdir: Path | None = None,
          **trainer_args) -> dict:
    _keep_ultralytics_offline()
    import torch
    from ultralytics import YOLO
    from ultralytics.utils import YAML

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fastsam-shapes-", dir=workdir) as tmp:
        tmp = Path(tmp)
        data_yaml = write_dataset(tmp / "data", n_train, n_val, seed)
        t_data = time.monotonic() - t0
        model_yaml = tmp / "fastsam-shapes-seg.yaml"
        YAML.save(model_yaml, model_config())
        model = YOLO(str(model_yaml), task="segment")
        args = dict(
            data=str(data_yaml), epochs=epochs, time=(minutes / 60.0 if minutes else None), imgsz=IMGSZ,
            batch=batch, device="cpu", workers=0, seed=seed, deterministic=True, amp=False, plots=False,
            val=False, project=str(tmp / "runs"), name="train", exist_ok=True, verbose=False,
            single_cls=True, pretrained=False, cache=False,
            # Plain scenes instead of mosaics (the shapes are already many per image and mosaics
            # shrink them), and masks at 1/2 instead of 1/4 resolution: sharper edges for the
            # IoU bars at a small cost.
            mosaic=0.0, mask_ratio=2,
        )
        model.train(**{**args, **trainer_args})
        best = Path(model.trainer.best)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(out.suffix + ".partial")
        shutil.copyfile(best, partial)
        os.replace(partial, out)
    return {"seconds": time.monotonic() - t0, "data_seconds": t_data, "out": str(out)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--set", action="append", default=[], help="extra trainer argument key=value")
    a = p.parse_args(argv)
    import yaml
    extra = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.set)}
    stats = train(a.out, a.seed, a.epochs, a.minutes, n_train=a.n_train, batch=a.batch, **extra)
    print(stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
