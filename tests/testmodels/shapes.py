"""Synthetic "shapes" scenes: the training and test data of the trained test-model fixtures.

Every scene is a few filled shapes (ellipses, rectangles, triangles, convex polygons) on a flat,
gradient or noisy background, each in its own colour and some textured (stripes, noise), some
touching or overlapping. The ground truth is exact: ``masks[i]`` is the part of shape ``i`` still
visible after the shapes painted over it, so a model that segments "objects" has one right answer
per shape.

Stable API (other fixtures and tests import it; keep it backward compatible):

* ``make_scene(seed, height=256, width=256, n_shapes=(3, 6)) -> Scene``
* ``Scene``: ``image`` uint8 [H,W,3], ``masks`` bool [N,H,W] (each non-empty, one connected
  piece, at least half of the shape visible), ``boxes_xyxy`` int [N,4] (inclusive pixel bounds of
  each mask, x0,y0,x1,y1), ``kinds`` list of "ellipse" | "rectangle" | "triangle" | "polygon".
* ``TRAIN_SEEDS`` / ``HELDOUT_SEEDS``: disjoint ranges; train only on the first, measure only on
  the second.

Pure numpy, deterministic: the same arguments give the same scene bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TRAIN_SEEDS = range(0, 1_000_000)
HELDOUT_SEEDS = range(1_000_000, 1_100_000)

SHAPE_KINDS = ("ellipse", "rectangle", "triangle", "polygon")

# Shape size as a fraction of the image's shorter side (the radius of the circle it fits in).
_MIN_RADIUS_FRAC = 0.10
_MAX_RADIUS_FRAC = 0.24
# An occluded shape must keep this much of itself visible (else the "object" is a sliver).
_MIN_VISIBLE_FRAC = 0.55
_MIN_COLOR_DISTANCE = 70.0  # RGB L2 between the mean colours of any two shapes / the background
_PLACEMENT_TRIES = 40


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # uint8 [H, W, 3]
    masks: np.ndarray  # bool [N, H, W], visible part of each shape
    boxes_xyxy: np.ndarray  # int64 [N, 4], inclusive bounds of each mask
    kinds: list = field(default_factory=list)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def __len__(self) -> int:
        return int(self.masks.shape[0])


def make_scene(seed: int, height: int = 256, width: int = 256, n_shapes=(3, 6)) -> Scene:
    """Render scene ``seed``; ``n_shapes`` is an inclusive (min, max) count or an exact int.

    The minimum count is a target, not a promise: a shape that cannot be placed without hiding
    too much of another is dropped, so a crowded small image may hold fewer (never zero).
    """
    if height < 32 or width < 32:
        raise ValueError(f"make_scene needs an image of at least 32x32 pixels, got {height}x{width}")
    lo, hi = (n_shapes, n_shapes) if isinstance(n_shapes, (int, np.integer)) else n_shapes
    if not 1 <= lo <= hi:
        raise ValueError(f"n_shapes must be a count >= 1 or a (min, max) pair, got {n_shapes!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), height, width, 0x5A4E]))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    background, bg_mean = _background(rng, height, width, yy, xx)
    count = int(rng.integers(lo, hi + 1))

    full_masks: list[np.ndarray] = []  # whole shape, before anything covers it
    visible: list[np.ndarray] = []
    paints: list[np.ndarray] = []
    kinds: list[str] = []
    colors: list[np.ndarray] = [bg_mean]
    for _ in range(count):
        kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
        color = _distinct_color(rng, colors)
        for _try in range(_PLACEMENT_TRIES):
            shape = _shape_mask(rng, kind, height, width, yy, xx)
            if shape.sum() < _min_area(height, width):
                continue
            covered = [v & ~shape for v in visible]
            touched = [bool((v & shape).any()) for v in visible]
            if all(not t or _still_an_object(c, f) for c, f, t in zip(covered, full_masks, touched)):
                break
        else:
            continue  # no room for this shape; the scene keeps the ones it has
        visible = covered + [shape]
        full_masks.append(shape)
        kinds.append(kind)
        colors.append(color)
        paints.append(_texture(rng, color, height, width, yy, xx))

    if not visible:  # tiny images only; a shape always fits when nothing else is there
        raise RuntimeError(f"make_scene could not place a shape in a {height}x{width} image")

    image = background
    for shape, paint in zip(full_masks, paints):
        image = np.where(shape[..., None], paint, image)
    # mild sensor noise so flat areas are not perfectly flat
    image = image + rng.normal(0.0, 3.0, size=image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    masks = np.stack(visible).astype(bool)
    return Scene(image=image, masks=masks, boxes_xyxy=_boxes(masks), kinds=kinds)


def _min_area(height: int, width: int) -> float:
    r = _MIN_RADIUS_FRAC * min(height, width)
    return 0.5 * r * r  # a thin-ish triangle of the smallest size still counts


def _still_an_object(visible_part: np.ndarray, full: np.ndarray) -> bool:
    area = int(visible_part.sum())
    if area < _MIN_VISIBLE_FRAC * int(full.sum()):
        return False
    return _is_connected(visible_part)


def _is_connected(mask: np.ndarray) -> bool:
    """4-connected flood fill by repeated dilation, inside the mask's bounding box."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return False
    crop = mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    filled = np.zeros_like(crop)
    filled[ys[0] - ys.min(), xs[0] - xs.min()] = True
    total = int(crop.sum())
    count = 1
    while True:
        grown = filled.copy()
        grown[1:] |= filled[:-1]
        grown[:-1] |= filled[1:]
        grown[:, 1:] |= filled[:, :-1]
        grown[:, :-1] |= filled[:, 1:]
        grown &= crop
        new_count = int(grown.sum())
        if new_count == count:
            return new_count == total
        filled, count = grown, new_count


def _boxes(masks: np.ndarray) -> np.ndarray:
    boxes = np.zeros((masks.shape[0], 4), dtype=np.int64)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        boxes[i] = (xs.min(), ys.min(), xs.max(), ys.max())
    return boxes


def _random_rgb(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def _distinct_color(rng: np.random.Generator, taken: list[np.ndarray]) -> np.ndarray:
    best, best_gap = None, -1.0
    for _ in range(64):
        c = _random_rgb(rng)
        gap = min(float(np.linalg.norm(c - t)) for t in taken)
        if gap >= _MIN_COLOR_DISTANCE:
            return c
        if gap > best_gap:
            best, best_gap = c, gap
    return best


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Value noise in [0,1]: a coarse random grid, bilinearly upsampled."""
    grid = rng.uniform(0, 1, size=(cells + 1, cells + 1)).astype(np.float32)
    gy = np.linspace(0, cells, height, dtype=np.float32)
    gx = np.linspace(0, cells, width, dtype=np.float32)
    y0 = np.minimum(gy.astype(int), cells - 1)
    x0 = np.minimum(gx.astype(int), cells - 1)
    fy = (gy - y0)[:, None]
    fx = (gx - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _background(rng, height, width, yy, xx):
    style = ("flat", "gradient", "noise")[int(rng.integers(3))]
    c0 = _random_rgb(rng)
    if style == "flat":
        img = np.broadcast_to(c0, (height, width, 3)).astype(np.float32)
    elif style == "gradient":
        # a gentle two-colour ramp: different enough to matter, not a second "object"
        c1 = np.clip(c0 + rng.uniform(-60, 60, size=3), 0, 255).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xx / width + np.sin(angle) * yy / height
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    else:
        n = _smooth_noise(rng, height, width, int(rng.integers(3, 9)))
        img = c0 + (n[..., None] - 0.5) * rng.uniform(30, 70)
    return img.astype(np.float32), img.reshape(-1, 3).mean(0)


def _texture(rng, color, height, width, yy, xx):
    style = ("flat", "flat", "stripes", "noise")[int(rng.integers(4))]
    if style == "flat":
        return np.broadcast_to(color, (height, width, 3)).astype(np.float32)
    if style == "stripes":
        period = rng.uniform(6, 16)
        angle = rng.uniform(0, np.pi)
        phase = np.cos(angle) * xx + np.sin(angle) * yy
        band = (np.floor(phase / (period / 2)) % 2)[..., None]
        shift = rng.uniform(25, 45) * np.where(color.mean() > 127, -1.0, 1.0)
        return (color + band * shift).astype(np.float32)
    noise = rng.normal(0.0, rng.uniform(10, 20), size=(height, width, 1)).astype(np.float32)
    return (color + noise).astype(np.float32)


def _shape_mask(rng, kind, height, width, yy, xx) -> np.ndarray:
    side = min(height, width)
    r = rng.uniform(_MIN_RADIUS_FRAC, _MAX_RADIUS_FRAC) * side
    # keep most of the shape inside the frame
    cx = rng.uniform(0.6 * r, width - 0.6 * r)
    cy = rng.uniform(0.6 * r, height - 0.6 * r)
    angle = rng.uniform(0, np.pi)
    ca, sa = np.cos(angle), np.sin(angle)
    u = (xx - cx) * ca + (yy - cy) * sa
    v = -(xx - cx) * sa + (yy - cy) * ca
    if kind == "ellipse":
        a, b = r, r * rng.uniform(0.5, 1.0)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == "rectangle":
        a, b = r * rng.uniform(0.75, 1.0), r * rng.uniform(0.45, 0.9)
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    n = 3 if kind == "triangle" else int(rng.integers(5, 8))
    # vertices on a circle are always a convex polygon; spread them so it is not a sliver
    base = np.sort(rng.uniform(0, 2 * np.pi / n, size=1) + np.arange(n) * 2 * np.pi / n)
    angles = base + rng.uniform(-0.25, 0.25, size=n) * (2 * np.pi / n)
    px, py = cx + r * np.cos(angles), cy + r * np.sin(angles)
    inside = np.ones((height, width), dtype=bool)
    for i in range(n):
        x0, y0, x1, y1 = px[i], py[i], px[(i + 1) % n], py[(i + 1) % n]
        # vertices go counter-clockwise in math orientation; keep the inner side of each edge
        inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) >= 0
    return inside
