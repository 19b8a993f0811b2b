"""Everything-mode quality judged on ground truth: held-out shape scenes, their exact shape masks,
and recall / mean IoU of any segmenter on them (issue 16). No pack code: a segmenter is a callable.

* ``Segmenter``: ``image -> masks``, an RGB uint8 ``[H,W,3]`` numpy image in, bool ``[N,H,W]``
  masks out (a numpy array, a torch tensor or a list of ``[H,W]`` masks; float masks count above
  0.5). Anything that segments everything plugs in: the pack's seg map in any sampling mode,
  ``reference_segmenter`` (segment-anything's ``SamAutomaticMaskGenerator``), FastSAM...
* ``SceneSpec`` / ``QUALITY_SCENES`` (the tests' few small scenes) / ``BENCH_SCENES`` (the
  benchmark's, the issue's 640×480 eight-shape scenes among them) / ``quality_scenes(specs)``.
* ``measure(segmenter, scenes, name) -> Quality``; ``evaluate({name: segmenter}, scenes)``;
  ``table(rows)`` (markdown).
* ``MATCH_IOU`` (0.7): a ground-truth shape is found when its best-matching segment reaches it.

Scenes are the trained fixtures' own kind (``testmodels.shapes``: filled ellipses, rectangles,
triangles and polygons, some textured, touching or overlapping), drawn from ``HELDOUT_SEEDS``
(the fixtures never trained on them) at offset ``QUALITY_SEED_OFFSET``, away from the indices the
other fixture tests use (0..~30), so no bar here was tuned on scenes another test looks at.

Metrics (over every shape of every scene, so one odd shape cannot flip a result):
each shape's best IoU with any segment (``trained_fastsam.best_ious``: not one-to-one, as
"is this object among the segments?" asks); **recall** = share of shapes whose best IoU is
>= ``MATCH_IOU``; **mean IoU** = mean best IoU of the matched shapes (how tight the found masks
are); ``mean_best_iou`` over all shapes is reported too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from testmodels.shapes import HELDOUT_SEEDS, Scene, make_scene
from testsupport.trained_fastsam import best_ious

MATCH_IOU = 0.7
#: quality scenes are HELDOUT_SEEDS[QUALITY_SEED_OFFSET + index]
QUALITY_SEED_OFFSET = 50_000

Segmenter = Callable[[np.ndarray], object]


@dataclass(frozen=True)
class SceneSpec:
    index: int
    height: int
    width: int
    n_shapes: object = (3, 6)  # make_scene's n_shapes: a count or an inclusive (min, max)


# The tests: six scenes at the SAM fixture's own input size (3-6 shapes each) and two crowded
# 320×320 ones with eight shapes, touching and overlapping: 45 shapes in all.
QUALITY_SCENES = tuple(SceneSpec(i, 256, 256) for i in range(6)) + tuple(SceneSpec(i, 320, 320, 8) for i in (10, 11))
# The benchmark: the held-out 640×480 eight-shape scenes, plus the test scenes.
BENCH_SCENES = tuple(SceneSpec(i, 480, 640, 8) for i in range(100, 104)) + QUALITY_SCENES


def quality_scene(spec: SceneSpec) -> Scene:
    return make_scene(HELDOUT_SEEDS[QUALITY_SEED_OFFSET + spec.index], spec.height, spec.width, spec.n_shapes)


def quality_scenes(specs: Sequence[SceneSpec] = QUALITY_SCENES) -> list[Scene]:
    return [quality_scene(s) for s in specs]


def as_bool_masks(found, height: int, width: int) -> np.ndarray:
    """A segmenter's answer as bool ``[N,H,W]`` numpy; refuses masks of another size."""
    if hasattr(found, "detach"):  # a torch tensor
        found = found.detach().cpu().numpy()
    if isinstance(found, (list, tuple)):
        found = np.stack([np.asarray(m) for m in found]) if found else np.zeros((0, height, width), bool)
    found = np.asarray(found)
    if found.ndim != 3 or found.shape[1:] != (height, width):
        raise ValueError(f"a segmenter must return [N, {height}, {width}] masks, got shape {found.shape}")
    return found > 0.5 if found.dtype != bool else found


@dataclass
class Quality:
    """One segmenter's ground-truth quality over a set of scenes."""

    name: str
    best: np.ndarray  # float [shapes]: each shape's best IoU with any segment, scene after scene
    segments: int  # segments returned, all scenes
    seconds: float  # wall time of the segmenter calls
    per_scene: list = field(default_factory=list)  # best IoUs of each scene

    @property
    def shapes(self) -> int:
        return int(len(self.best))

    @property
    def found(self) -> int:
        return int((self.best >= MATCH_IOU).sum())

    @property
    def recall(self) -> float:
        return self.found / max(1, self.shapes)

    @property
    def mean_iou(self) -> float:
        """Mean best IoU of the matched shapes (0 when none is matched)."""
        matched = self.best[self.best >= MATCH_IOU]
        return float(matched.mean()) if len(matched) else 0.0

    @property
    def mean_best_iou(self) -> float:
        return float(self.best.mean()) if len(self.best) else 0.0


def measure(segmenter: Segmenter, scenes: Sequence[Scene], name: str = "") -> Quality:
    """Run ``segmenter`` on each scene and score it against the shapes; ``ValueError`` (from
    ``as_bool_masks``) when it returns masks of another size than the image."""
    best, per_scene, segments, seconds = [], [], 0, 0.0
    for scene in scenes:
        t0 = time.perf_counter()
        found = segmenter(scene.image)
        seconds += time.perf_counter() - t0
        masks = as_bool_masks(found, scene.height, scene.width)
        masks = masks[masks.any(axis=(1, 2))]  # an empty placeholder mask is no segment
        segments += len(masks)
        ious = best_ious(masks, scene.masks)
        per_scene.append(ious)
        best.extend(ious.tolist())
    return Quality(name, np.asarray(best, dtype=np.float64), segments, seconds, per_scene)


def evaluate(segmenters: Mapping[str, Segmenter], scenes: Sequence[Scene]) -> list[Quality]:
    return [measure(fn, scenes, name) for name, fn in segmenters.items()]


def table(rows: Sequence[Quality]) -> str:
    lines = [f"| segmenter | shapes found at IoU ≥ {MATCH_IOU} | recall | mean IoU (matched) | mean best IoU (all) "
             "| segments | time |", "|---|---|---|---|---|---|---|"]
    for q in rows:
        lines.append(f"| {q.name} | {q.found}/{q.shapes} | {q.recall:.3f} | {q.mean_iou:.3f} | {q.mean_best_iou:.3f} "
                     f"| {q.segments} | {q.seconds:.1f} s |")
    return "\n".join(lines)


def reference_segmenter(sam, **settings) -> Segmenter:
    """segment-anything's ``SamAutomaticMaskGenerator(sam, **settings)`` as a segmenter."""
    from segment_anything import SamAutomaticMaskGenerator

    generator = SamAutomaticMaskGenerator(sam, **settings)

    def run(image: np.ndarray) -> np.ndarray:
        records = generator.generate(image)
        if not records:
            return np.zeros((0, *image.shape[:2]), dtype=bool)
        return np.stack([r["segmentation"] for r in records])

    return run
