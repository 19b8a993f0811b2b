"""Synthetic test images with known objects: the benchmarks' input.

A scene is flat and textured shapes (ellipses, rectangles, triangles) over a noisy gradient, at
any size, with its label map (``0`` = background, ``k`` = the k-th shape's visible pixels). The
label map is what the synthetic SAM decoder is fitted to (``bench/checkpoints.py``), so the
segments the benchmark produces look like objects, as a real model's would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # uint8 [H,W,3]
    labels: np.ndarray  # int32 [H,W]; 0 background, 1..n objects (visible part)

    @property
    def n_objects(self) -> int:
        return int(self.labels.max())

    def object_boxes(self) -> dict[int, tuple[int, int, int, int]]:
        """xyxy (inclusive) of each visible object."""
        boxes = {}
        for k in range(1, self.n_objects + 1):
            ys, xs = np.nonzero(self.labels == k)
            if len(xs):
                boxes[k] = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        return boxes


def parse_size(text: str) -> tuple[int, int]:
    """'512x384' (width x height) or '1024' (square) → (height, width)."""
    text = text.lower().strip()
    if "x" in text:
        w, h = text.split("x", 1)
        return int(h), int(w)
    return int(text), int(text)


def make_scene(height: int, width: int, seed: int = 0, density: float = 1.0) -> Scene:
    """About ``density × (10 + area/12000)`` shapes, radii 3%..22% of the short side, some occluded."""
    rng = np.random.default_rng([seed, height, width, 0x5EED])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(20, 90, 3)
    grad = rng.uniform(-40, 40, 3)
    image = base[None, None, :] + grad[None, None, :] * (xx / width)[..., None]
    image = image + rng.normal(0, 6, (height, width, 3))
    labels = np.zeros((height, width), dtype=np.int32)
    short = min(height, width)
    count = max(3, int(round(density * (10 + height * width / 12000))))
    colours: list[np.ndarray] = [base]
    for k in range(1, count + 1):
        # later shapes are smaller on average, so small objects sit on top of big ones
        r = short * rng.uniform(0.03, 0.22 - 0.12 * k / count)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        kind = rng.integers(0, 3)
        if kind == 0:
            a, b = r, r * rng.uniform(0.5, 1.0)
            t = rng.uniform(0, np.pi)
            u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
            v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
            inside = (u / a) ** 2 + (v / b) ** 2 <= 1
        elif kind == 1:
            hw, hh = r, r * rng.uniform(0.4, 1.0)
            inside = (np.abs(xx - cx) <= hw) & (np.abs(yy - cy) <= hh)
        else:
            angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
            px, py = cx + r * np.cos(angles), cy + r * np.sin(angles)
            inside = np.ones_like(xx, dtype=bool)
            sign = np.sign((px[1] - px[0]) * (py[2] - py[0]) - (py[1] - py[0]) * (px[2] - px[0]))
            for i in range(3):
                j = (i + 1) % 3
                edge = (px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i])
                inside &= edge * sign >= 0
        if not inside.any():
            continue
        # a colour clearly different from those already used
        for _ in range(20):
            colour = rng.uniform(0, 255, 3)
            if min(np.linalg.norm(colour - c) for c in colours) > 60:
                break
        colours.append(colour)
        texture = np.zeros((height, width, 1), dtype=np.float32)
        if rng.random() < 0.3:  # stripes
            period = rng.uniform(6, 20)
            texture = 25 * np.sign(np.sin((xx + yy) * (2 * np.pi / period)))[..., None]
        image[inside] = (colour[None, :] + texture[inside] + rng.normal(0, 4, (int(inside.sum()), 3)))
        labels[inside] = k
    # relabel so the visible objects are 1..n with no gaps (fully covered shapes disappear)
    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(labels.max() + 1, dtype=np.int32)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    labels = lut[labels]
    return Scene(np.clip(image, 0, 255).astype(np.uint8), labels)
