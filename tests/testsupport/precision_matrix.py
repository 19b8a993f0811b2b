"""The precision matrix: every node × every model family, each precision compared with fp32.

Used by ``tests/test_precision_matrix.py`` (CPU: fp32 vs bf16) and ``bench/gpu_check.py`` (CUDA:
fp16 and bf16 vs fp32). Families: the trained SAM fixture (SAM ViT), a small TinyViT checkpoint
(MobileSAM's architecture scaled down; random weights, so masks are compared with the fp32
masks, not with shapes), and the trained FastSAM fixture. Nodes: SAM Segmentation Map, SAM
Segment Picker on its map, Tiny SAM with a click per shape, all boxes, and no prompt.

* ``run_nodes(model, family, scene) -> dict`` of every node's outputs on one scene;
* ``compare(ref, got) -> dict`` of the statistics the bounds are on;
* ``violations(family, stats, model) -> [str]``: the ``BOUNDS`` broken by a list of ``compare``
  results (``summary(stats)``: one line of them);
* ``small_tinyvit_checkpoint(path)``, ``load(family, precision, tinyvit_path)``;
* ``measure()`` (``python tests/testsupport/precision_matrix.py [family ...]``): the statistics over
  ``MEASURE_SCENES``, where the bounds come from.

Everything mode is a cascade of hard thresholds (predicted IoU, stability, NMS): a rounding that
moves a score across one of them swaps a segment for an overlapping one, so per-segment minimums
are erratic; the bounds (``BOUNDS``, with the measured values) are mostly on aggregates.
"""

from __future__ import annotations

import contextlib
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

if __name__ == "__main__":  # measurement mode: the package alias and helpers, as under pytest
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import conftest  # noqa: F401

from comfyui_sam_kit.nodes.model_loader import SamKitModelLoader
from comfyui_sam_kit.samkit import model_folders
from comfyui_sam_kit.nodes.seg_map import SamKitSegmentationMap
from comfyui_sam_kit.nodes.segment_picker import SamKitSegmentPicker
from comfyui_sam_kit.nodes.tiny_sam import SamKitTinySAM
from comfyui_sam_kit.samkit import automask, sam_prompted
from comfyui_sam_kit.samkit.loader import SamConfig, build_sam
from comfyui_sam_kit.samkit.tiny_vit import TinyViTConfig
from testsupport.checkpoints import save_sam_checkpoint
from testsupport.trained import TRAINED_SAM_PATH, heldout_scene, interior_point, mask_iou
from testsupport.trained_fastsam import TRAINED_FASTSAM_PATH, xywh_of

FAMILIES = ("sam", "tinyvit", "fastsam")
PRECISIONS = ("fp32", "bf16")

# Inputs: held-out scenes at the SAM fixture's own size and one resized (200x300); TinyViT and
# its 1024-px input run on small images only (the encoder's cost does not depend on them).
SCENES = {"sam": [(20, 256, 256), (5, 200, 300)], "tinyvit": [(0, 96, 128)],
          "fastsam": [(20, 256, 256), (5, 200, 300)]}
MEASURE_SCENES = {"sam": [(i, 256, 256) for i in range(20, 30)] + [(i, 200, 300) for i in range(4, 8)],
                  "tinyvit": [(i, 96, 128) for i in range(5)],
                  "fastsam": [(i, 256, 256) for i in range(20, 26)] + [(5, 200, 300)]}

# Seg map settings per family: the SAM fixture's everything settings (tests/test_testmodel_sam.py:
# a 256-px model's quality estimates are modest, so SAM's defaults 0.88 / 0.95 keep nothing); for
# random TinyViT weights open thresholds and a 4x4 grid (its 1024-px masks are the cost on a CPU).
# FastSAM's seg map ignores them (FastSAM's own everything mode).
# Everything mode runs the grid (``sampling="grid"``): the bounds below were measured on it, before
# the sampling choice existed (hierarchical's dense points follow its sparse masks, so a bf16 change
# there moves more; not measured yet).
SEGMAP = {"sam": dict(points_per_side=16, pred_iou_thresh=0.5, stability_score_thresh=0.7, sampling="grid"),
          "tinyvit": dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, sampling="grid"),
          "fastsam": dict(points_per_side=16, pred_iou_thresh=0.5, stability_score_thresh=0.7)}
# Tiny SAM without a prompt runs SAM's everything mode at SAM's default settings, fixed in the code
# (``sam_prompted._everything``); with these test models that keeps nothing (the SAM fixture) or
# takes minutes (TinyViT: 1024 prompts, 1024-px masks), so the matrix runs that same node and path
# with the seg map's settings. FastSAM's no-prompt mode is its own everything pass.
NO_PROMPT_SETTINGS = {f: {k: v for k, v in SEGMAP[f].items() if k != "sampling"} for f in ("sam", "tinyvit")}
# Tiny SAM widgets per family: FastSAM at the fixture's training size and everything-mode
# confidence (tests/test_tinysam_trained.py); SAM-family models keep every prompted object.
TINY_SAM = {"sam": dict(size=1024, confidence=0.0, sampling="grid"), "tinyvit": dict(size=1024, confidence=0.0, sampling="grid"),
            "fastsam": dict(size=256, confidence=0.25)}

# ------------------------------------------------------------------ bounds (half precision vs fp32)
# Measured with ``measure()`` on the CPU, bf16 against fp32, with this policy (AVX512-BF16 CPU,
# torch 2.14). The test runs two or one of these scenes, so bounds hold per scene, not on means of many:
#  SAM fixture, 14 scenes (9-20 segments each): image embedding relative L2 error 0.0047-0.0058
#    (bf16's unit roundoff is 0.0039); click IoU min 0.945, per-scene means 0.987-0.999; box IoU
#    min 0.922, per-scene means 0.981-0.999, always as many box objects; pixels whose mask changed:
#    at most 0.4 % of the image per object; seg map / no prompt (same numbers: same settings and
#    path): share of a scene's fp32 segments found again at IoU >= 0.9 0.889 (scene 20) to 1,
#    segment count differs by <= 2, region agreement 0.958-0.996; picker IoU per-scene means
#    0.930-0.997 (single points down to 0.73: the segment under them swapped for an overlapping one).
#  TinyViT (random weights), 5 scenes: embedding error 0.0086-0.0095; click IoU per-scene means
#    0.977-1.000; box IoU per-scene means 0.888 (scene 0) to 0.999, single boxes down to 0.33:
#    random logits lie near 0 over large areas, where rounding flips the sign; per-scene mean share
#    of changed pixels <= 0.025; seg map / no prompt: one segment each, region agreement >= 0.9998;
#    picker IoU >= 0.9999.
#  FastSAM: bf16 on the CPU runs fp32 (precision.fastsam_dtype): identical outputs, required exactly.
# Bounds sit below the worst measured value (above, for errors) by a margin for other CPUs' and
# GPUs' half kernels (oneDNN with or without AVX512-BF16/AMX and cuBLAS round differently): about
# 0.03-0.05 on IoUs, 0.06-0.09 on per-scene shares, one more segment, twice the errors. A broken
# half path fails them all: measured with the pixel mean left unsubtracted in bf16 (SAM fixture, 4
# scenes), click IoU mean 0.71, box 0.60, seg map segments found again 9 %, region agreement 0.74.
# fp16 keeps 3 more mantissa bits than bf16: same bounds.
# Keys: ``<stat>_min`` / ``<stat>_mean``: lowest allowed minimum / mean over the test's objects or
# scenes; ``<stat>_max`` / ``<stat>_mean_max``: highest allowed maximum / mean.
BOUNDS = {
    "sam": {"embedding_error_max": 0.012, "click_iou_min": 0.90, "click_iou_mean": 0.96, "box_iou_min": 0.87,
            "box_iou_mean": 0.95, "changed_max": 0.01, "picker_iou_mean": 0.88, "matched_min": 0.80,
            "count_diff_max": 3, "regions_min": 0.90},
    "tinyvit": {"embedding_error_max": 0.02, "click_iou_mean": 0.93, "box_iou_mean": 0.83, "changed_mean_max": 0.05,
                "picker_iou_mean": 0.95, "matched_min": 0.95, "count_diff_max": 1, "regions_min": 0.99},
}
# FastSAM in fp16 (CUDA only: ultralytics ignores ``half`` on the CPU) could not be measured here:
# the GPU check applies the SAM fixture's bounds without the per-object minimums, and says so.
BOUNDS["fastsam"] = {k: v for k, v in BOUNDS["sam"].items() if k not in ("click_iou_min", "box_iou_min")}


def _flat(stats: list[dict], key: str) -> np.ndarray:
    return np.asarray([v for s in stats for v in (s[key] if isinstance(s[key], list) else [s[key]])], dtype=float)


#: node -> (bound name, statistic) pairs checked for it
NODE_CHECKS = {
    "seg map": [("matched", "segmap_matched"), ("regions", "segmap_regions"), ("count_diff", "segmap_count_diff")],
    "picker": [("picker_iou", "picker_iou")],
    "click": [("click_iou", "click_iou"), ("changed", "click_changed"), ("embedding_error", "embedding_error")],
    "box": [("box_iou", "box_iou"), ("changed", "box_changed")],
    "no prompt": [("matched", "everything_matched"), ("regions", "everything_regions"),
                  ("count_diff", "everything_count_diff")],
}
_TESTS = (("_min", np.min, np.greater_equal), ("_mean", np.mean, np.greater_equal),
          ("_max", np.max, np.less_equal), ("_mean_max", np.mean, np.less_equal))


def violations(family: str, stats: list[dict], model, nodes=tuple(NODE_CHECKS)) -> list[str]:
    """The bounds broken by ``stats`` (``compare`` results of one family at one precision) for ``nodes``.

    A FastSAM model that runs fp32 (bf16 asked for on the CPU) must give identical outputs.
    """
    if model.is_fastsam and model.dtype == torch.float32:
        return [] if all(s["identical"] for s in stats) else ["FastSAM runs fp32 here, yet outputs differ from fp32"]
    bounds, broken = BOUNDS[family], []
    for node in nodes:
        for bound, key in NODE_CHECKS[node]:
            if stats[0][key] is None:  # no image embedding (FastSAM)
                continue
            values = _flat(stats, key)
            for suffix, reduce, ok in _TESTS:
                limit = bounds.get(bound + suffix)
                if limit is not None and not ok(reduce(values), limit):
                    broken.append(f"{node}: {key} {suffix[1:].replace('_', ' ')} {reduce(values):.4f}, bound {limit}")
        if node == "box" and any(a != b for s in stats for a, b in [s["box_count"]]):
            broken.append(f"box: objects (fp32, half) {[s['box_count'] for s in stats]} differ")
    return broken


def summary(stats: list[dict]) -> str:
    """One line of the worst and mean values, for reports."""
    part = lambda key: f"{_flat(stats, key).min():.3f}/{_flat(stats, key).mean():.3f}"  # noqa: E731
    embedding = "" if stats[0]["embedding_error"] is None else \
        f"embedding error {_flat(stats, 'embedding_error').max():.4f}; "
    return (f"{embedding}min/mean IoU: click {part('click_iou')}, box {part('box_iou')}, picker {part('picker_iou')}; "
            f"seg map matched {part('segmap_matched')}, regions {part('segmap_regions')}, "
            f"{int(_flat(stats, 'segmap_count').sum())} segments; no prompt matched {part('everything_matched')}")


def small_tinyvit_checkpoint(path: Path, seed: int = 0) -> Path:
    """MobileSAM's architecture (the pack's TinyViT, SAM's heads) at a few channels, saved like mobile_sam.pt.

    The full TinyViT-5M takes ~10 s per 1024-px encode on two shared cores; the code path and
    its precision-relevant parts (BatchNorm, attention biases, LayerNorm2d neck) are the same.
    The IoU head's bias is raised so masks pass SAM's default quality threshold (random weights
    score about 0).
    """
    torch.manual_seed(seed)
    tv = TinyViTConfig(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), num_classes=0,
                       out_chans=64)
    config = SamConfig(encoder="tiny_vit", encoder_kwargs=tuple(sorted(vars(tv).items())), prompt_embed_dim=64,
                       image_size=1024, mask_in_chans=16, decoder_depth=2, decoder_mlp_dim=128,
                       num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=64)
    sam = build_sam(config).eval()
    with torch.no_grad():
        for m in sam.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, as a trained model has
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(1.0)
    return save_sam_checkpoint(sam, path)


@contextlib.contextmanager
def in_model_folder(path: Path):
    """The loader node takes names in the model folders only (as in ComfyUI): for the duration,
    the checkpoint's own folder is the model folder, and this yields the name to choose."""
    previous = model_folders._folder_provider
    model_folders.set_folder_provider(lambda: [Path(path).parent])
    try:
        yield Path(path).name
    finally:
        model_folders.set_folder_provider(previous)


def family_path(family: str, tinyvit_path: Path) -> Path:
    return {"sam": TRAINED_SAM_PATH, "tinyvit": tinyvit_path, "fastsam": TRAINED_FASTSAM_PATH}[family]


def load(family: str, precision: str, tinyvit_path: Path):
    with in_model_folder(family_path(family, tinyvit_path)) as name:
        (model,) = SamKitModelLoader().load(name, "cpu", precision)
    return model


def _tensor(image_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image_u8).float()[None] / 255.0


def _tiny(model, image, family, **prompts):
    widgets = dict(iou=0.9, box_prompt="[[0,0,0,0]]", point_prompt="[[0,0]]", point_label="[0]", **TINY_SAM[family])
    widgets.update({k: json.dumps(v) for k, v in prompts.items()})
    return SamKitTinySAM().run(model, image, **widgets)


@contextlib.contextmanager
def no_prompt_settings(family: str):
    """Tiny SAM's no-prompt mode with ``NO_PROMPT_SETTINGS[family]`` (same node, same code path)."""
    if family not in NO_PROMPT_SETTINGS:
        yield
        return
    default = automask.AutoMaskSettings
    automask.AutoMaskSettings = partial(default, **NO_PROMPT_SETTINGS[family])
    try:
        yield
    finally:
        automask.AutoMaskSettings = default


def run_nodes(model, family: str, scene) -> dict:
    """Every node's outputs on one scene: seg map (+ picker at each shape), clicks, boxes, no prompt."""
    image = _tensor(scene.image)
    clicks = [interior_point(m) for m in scene.masks]
    seg_map, segments, _ = SamKitSegmentationMap().run(model, image, min_mask_region_area=0, crop_n_layers=0, seed=0,
                                                       **SEGMAP[family])
    picks = [SamKitSegmentPicker().run(seg_map, x, y)[0][0] for x, y in clicks]
    click_masks = [_tiny(model, image, family, point_prompt=[[x, y]], point_label=[1])[1][0] for x, y in clicks]
    box_objects = _tiny(model, image, family, box_prompt=[xywh_of(b) for b in scene.boxes_xyxy])[2]
    with no_prompt_settings(family):
        everything = _tiny(model, image, family)[2]
    # the image embedding the Tiny SAM calls above cached (SAM family): the encoder's own output
    embedding = sam_prompted.embed_image(model, scene.image).features.float() if model.is_sam else None
    return dict(seg_map=seg_map[0], segments=segments, picks=picks, clicks=click_masks, boxes=box_objects,
                everything=everything, embedding=embedding)


def _labels_of_masks(masks: torch.Tensor) -> torch.Tensor:
    """Per pixel, the last (smallest, painted on top) segment covering it, -1 for none."""
    covered = (masks > 0.5).flip(0)
    index = masks.shape[0] - 1 - covered.float().argmax(0)
    return torch.where(covered.any(0), index, torch.full_like(index, -1))


def _labels_of_map(seg_map: torch.Tensor) -> torch.Tensor:
    rgb = (seg_map * 255).round().to(torch.int64)
    return rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]


def region_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over pixels of IoU(region of the pixel in ``a``, region of the pixel in ``b``); 1 = same partition.

    ``a``/``b`` are label maps [H,W]; only the partition counts, not the label values (so a seg
    map recoloured because one segment more came first still agrees where its regions do).
    """
    _, ia = torch.unique(a.flatten(), return_inverse=True)
    _, ib = torch.unique(b.flatten(), return_inverse=True)
    na, nb = int(ia.max()) + 1, int(ib.max()) + 1
    joint = torch.bincount(ia * nb + ib, minlength=na * nb).view(na, nb).double()
    iou = joint / (joint.sum(1, keepdim=True) + joint.sum(0, keepdim=True) - joint)
    return float((joint * iou).sum() / a.numel())


def _matched_share(ref: torch.Tensor, got: torch.Tensor) -> float:
    """Share of the reference segments with a segment of IoU >= 0.9 in ``got`` (1 when both are empty)."""
    ref_m = [m.numpy() > 0.5 for m in ref if m.any()]
    got_m = [m.numpy() > 0.5 for m in got if m.any()]
    if not ref_m:
        return 1.0 if not got_m else 0.0
    return float(np.mean([max((mask_iou(r, g) for g in got_m), default=0.0) >= 0.9 for r in ref_m]))


def _count(masks: torch.Tensor) -> int:
    return int(masks.flatten(1).any(1).sum())


def compare(ref: dict, got: dict) -> dict:
    """The statistics the bounds are on, for one scene."""
    identical = all(torch.equal(a, b) for key in ("seg_map", "segments", "boxes", "everything")
                    for a, b in [(ref[key], got[key])]) and all(
        torch.equal(a, b) for key in ("clicks", "picks") for a, b in zip(ref[key], got[key]))
    embedding_error = None
    if ref["embedding"] is not None:  # relative L2 error of the image embedding
        embedding_error = float((got["embedding"] - ref["embedding"]).norm() / ref["embedding"].norm())
    return dict(
        identical=identical,
        embedding_error=embedding_error,
        segmap_count=_count(ref["segments"]),
        everything_count=_count(ref["everything"]),
        click_iou=[mask_iou(a.numpy() > 0.5, b.numpy() > 0.5) for a, b in zip(ref["clicks"], got["clicks"])],
        box_iou=[mask_iou(a.numpy() > 0.5, b.numpy() > 0.5) for a, b in zip(ref["boxes"], got["boxes"])],
        box_count=(_count(ref["boxes"]), _count(got["boxes"])),
        # share of the image's pixels on which the fp32 and half masks disagree (robust where a
        # mask is small and its IoU swings with a few pixels)
        click_changed=[float(((a > 0.5) != (b > 0.5)).float().mean()) for a, b in zip(ref["clicks"], got["clicks"])],
        box_changed=[float(((a > 0.5) != (b > 0.5)).float().mean()) for a, b in zip(ref["boxes"], got["boxes"])],
        picker_iou=[mask_iou(a.numpy() > 0.5, b.numpy() > 0.5) for a, b in zip(ref["picks"], got["picks"])],
        segmap_matched=_matched_share(ref["segments"], got["segments"]),
        segmap_count_diff=abs(_count(ref["segments"]) - _count(got["segments"])),
        segmap_regions=region_agreement(_labels_of_map(ref["seg_map"]), _labels_of_map(got["seg_map"])),
        everything_matched=_matched_share(ref["everything"], got["everything"]),
        everything_count_diff=abs(_count(ref["everything"]) - _count(got["everything"])),
        everything_regions=region_agreement(_labels_of_masks(ref["everything"]), _labels_of_masks(got["everything"])),
    )


def measure(families=FAMILIES, scenes=MEASURE_SCENES) -> None:
    """Print the bf16-vs-fp32 statistics over ``scenes`` (where the bounds above come from)."""
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        path = small_tinyvit_checkpoint(Path(tmp) / "tinyvit.pth")
        for family in families:
            t0 = time.perf_counter()
            models = {p: load(family, p, path) for p in PRECISIONS}
            stats = [compare(*(run_nodes(models[p], family, heldout_scene(*spec)) for p in PRECISIONS))
                     for spec in scenes[family]]
            print(f"{family} ({len(stats)} scenes, {time.perf_counter() - t0:.0f} s); bf16 runs {models['bf16'].dtype}")
            for i, st in enumerate(stats):
                print(f"  scene {scenes[family][i]}: " + ", ".join(
                    f"{k} {np.mean(v):.3f}" for k, v in st.items() if isinstance(v, (list, float, int))
                    and not isinstance(v, bool)))
            for key in stats[0]:
                values = [v for s in stats for v in (s[key] if isinstance(s[key], list) else [s[key]])]
                if key == "box_count" or stats[0][key] is None:
                    print(f"  {key}: {sorted(set(values))}")
                    continue
                a = np.asarray(values, dtype=float)
                print(f"  {key}: min {a.min():.4f} mean {a.mean():.4f} max {a.max():.4f} (n={len(a)})")


if __name__ == "__main__":
    measure(sys.argv[1:] or FAMILIES)
