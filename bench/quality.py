"""Everything mode on the trained SAM fixture: ground-truth quality, and speed against the reference.

    python -m bench.quality                    # quality table on the held-out scenes (a few minutes)
    python -m bench.quality --quick            # the tests' eight small scenes, 16x16 points (~1 minute)
    python -m bench.quality --speed            # pack vs SamAutomaticMaskGenerator, alternating runs
    python -m bench.quality --speed --profile  # plus where the pack's time goes, stage by stage
    python -m bench.quality --speed --quick    # a smoke run: one 256x256 scene, 16x16 points, one round

Quality: each segmenter of ``segmenters()`` on held-out shape scenes with exact ground truth
(``tests/testsupport/ground_truth.py``): recall of the shapes at IoU >= 0.7 and mean IoU of the
matched ones. Speed: the issue's fixture comparison, the seg map (``segmentation_map``: segments,
painting and outputs) against ``SamAutomaticMaskGenerator.generate`` on the same checkpoint and
the held-out 640x480 eight-shape scene, 32x32 points, pred_iou 0.5, stability 0.7; wall and CPU
(process) time of each side, alternating so a drift in machine load hits both alike. On a shared
machine the CPU-time ratio moves much less than the wall-time one; ``--threads 1`` steadier still.
On a loaded machine set ``OMP_WAIT_POLICY=PASSIVE`` for runs with several threads: spinning OpenMP
threads otherwise multiply the pack's time (its operations are many and small; README, Benchmarks).

The fixture is a tiny SAM (256 px ViT, 3 blocks): its encoder costs almost nothing, so this measures
the prompt decoding and post-processing that everything mode adds, where the full-size
architectures of ``bench.compare`` are dominated more by their encoders.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
import types
from pathlib import Path

from . import common

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _import_pack():
    """The pack as ComfyUI and the tests see it (package ``comfyui_sam_kit``), and the test helpers
    that hold the trained fixtures and their ground truth."""
    root = common.REPO_ROOT
    if "comfyui_sam_kit" not in sys.modules:
        pkg = types.ModuleType("comfyui_sam_kit")
        pkg.__path__ = [str(root)]
        pkg.__file__ = str(root / "__init__.py")
        sys.modules["comfyui_sam_kit"] = pkg
    helpers = str(root / "tests")
    if helpers not in sys.path:
        sys.path.insert(0, helpers)


_import_pack()

from comfyui_sam_kit.samkit import loader  # noqa: E402
from comfyui_sam_kit.samkit.automask import AutoMaskSettings, FilterCounts, generate_segments  # noqa: E402
from comfyui_sam_kit.samkit.sampling_params import OBJECT_AWARE, SAMPLING  # noqa: E402
from comfyui_sam_kit.samkit.segmap import segmentation_map  # noqa: E402
from testsupport import ground_truth as gt  # noqa: E402
from testsupport.trained import TRAINED_SAM_PATH  # noqa: E402
from testsupport.trained_fastsam import TRAINED_FASTSAM_PATH  # noqa: E402

#: the issue's settings for the fixture: 32x32 points; thresholds for a tiny model (trained.py)
SETTINGS = AutoMaskSettings(points_per_side=32, pred_iou_thresh=0.5, stability_score_thresh=0.7)
#: the tests' (testsupport/trained.EVERYTHING_SETTINGS): 16x16 points is enough at 256 px
QUICK_SETTINGS = AutoMaskSettings(points_per_side=16, points_per_batch=128, pred_iou_thresh=0.5,
                                  stability_score_thresh=0.7)


def pack_segmenter(model, settings: AutoMaskSettings, **options) -> gt.Segmenter:
    """The seg map (``segmentation_map``) as a segmenter; ``options`` go to it (e.g. ``sampling=``)."""

    def run(image: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(image).float()[None] / 255.0
        return segmentation_map(model, tensor, settings, **options).segments

    return run


def counted_segmenter(model, settings: AutoMaskSettings, sampling: str, proposals, counts: FilterCounts) -> gt.Segmenter:
    """``generate_segments`` (the seg map's segments, without painting) in ``sampling`` mode, adding
    what each filter let through to ``counts`` (``counts.candidates``: decoded (prompt, output) pairs)."""

    def run(image: np.ndarray) -> torch.Tensor:
        return generate_segments(model.runner, image, settings, counts, sampling=sampling, proposals=proposals).masks

    return run


def segmenters(model, settings: AutoMaskSettings, counts: dict | None = None) -> dict[str, gt.Segmenter]:
    """What is measured, by name: one line per way of segmenting everything. ``counts`` (name ->
    ``FilterCounts``) is filled for the sampling modes. Object-aware takes its boxes from the trained
    FastSAM fixture (``testsupport.trained_fastsam``), at the size it was trained at, as the node does."""
    counts = counts if counts is not None else {}
    fastsam = loader.load_model(str(TRAINED_FASTSAM_PATH), device="cpu", precision="fp32")
    out = {}
    for mode in SAMPLING:
        counts[mode] = FilterCounts()
        out[mode] = counted_segmenter(model, settings, mode, fastsam if mode == OBJECT_AWARE else None, counts[mode])
    out["SamAutomaticMaskGenerator"] = gt.reference_segmenter(model.runner, **settings.reference_kwargs())
    return out


# ------------------------------------------------------------------ speed


def _timed(fn):
    """(result, wall seconds, CPU seconds of this process: every thread, spinning ones included)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def speed(model, image: np.ndarray, settings: AutoMaskSettings, rounds: int, sampling: str = "grid") -> dict:
    ours = pack_segmenter(model, settings, sampling=sampling)
    reference = gt.reference_segmenter(model.runner, **settings.reference_kwargs())
    ours(image[:64, :64])  # warm-up (allocator, kernels), as bench.compare
    times = {"ours": [], "reference": []}
    counts = {}
    for _ in range(rounds):
        for name, fn in (("ours", ours), ("reference", reference)):
            found, wall, cpu = _timed(lambda: fn(image))
            times[name].append((wall, cpu))
            counts[name] = int(gt.as_bool_masks(found, *image.shape[:2]).any(axis=(1, 2)).sum())
    med = {name: tuple(statistics.median(t[k] for t in runs) for k in (0, 1)) for name, runs in times.items()}
    return dict(times=times, median=med, counts=counts,
                wall_ratio=med["reference"][0] / med["ours"][0], cpu_ratio=med["reference"][1] / med["ours"][1])


#: stage -> the functions whose cumulative time it is, (file name, function name); a function
#: called from another stage's function counts there only (see ``_stage_seconds``)
STAGES = {
    "image encoder": [("sam_transforms.py", "encode_image")],
    "prompt encoder": [("prompt_encoder.py", "forward")],
    "decoder transformer (IoU + tokens)": [("point_decoder.py", "decode_point_tokens")],
    "mask upscaling (low-res logits)": [("point_decoder.py", "masks_for")],
    "upsampling to full size": [("sam_backend.py", "upsample")],
    "stability score": [("automask_crop.py", "stability_score")],
    "boxes of full-size masks": [("amg.py", "batched_mask_to_box"), ("automask_crop.py", "mask_boxes")],
    "box NMS": [("boxes.py", "batched_nms")],
    "final masks: upsample + compact packing": [("automask.py", "_full_masks")],
    "small-region clean-up": [("automask.py", "_postprocess_small_regions")],
    "area order, label map, painting": [("compact.py", "label_map"), ("painting.py", "colour_labels"),
                                        ("painting.py", "order_by_area"), ("compact.py", "areas")],
    "segment outputs (compact -> float masks)": [("compact.py", "write")],
}


def _stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative time of each stage's functions, less what they spent inside another stage's."""
    by_name = {}
    for (path, _line, func), row in stats.stats.items():
        by_name.setdefault((Path(path).name, func), []).append(row)
    owner = {key: stage for stage, keys in STAGES.items() for key in keys}
    out = {}
    for stage, keys in STAGES.items():
        total = 0.0
        for key in keys:
            for _cc, _nc, _tt, cumulative, callers in by_name.get(key, []):
                # calls made from another stage's function are that stage's (e.g. _upsample in _full_masks)
                nested = sum(c[3] for (p, _l, f), c in callers.items() if owner.get((Path(p).name, f), stage) != stage)
                total += cumulative - nested
        out[stage] = total
    return out


def profile(model, image: np.ndarray, settings: AutoMaskSettings, sampling: str = "grid") -> tuple[float, dict[str, float]]:
    """(CPU seconds of one seg map run, CPU seconds per stage), from cProfile on the process clock."""
    run = pack_segmenter(model, settings, sampling=sampling)
    profiler = cProfile.Profile(time.process_time)
    profiler.runcall(run, image)
    stats = pstats.Stats(profiler)
    return stats.total_tt, _stage_seconds(stats)


# ------------------------------------------------------------------ main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the tests' scenes at 16x16 points (with --speed: one small scene, one round)")
    parser.add_argument("--speed", action="store_true", help="time the pack against the reference instead")
    parser.add_argument("--profile", action="store_true", help="with --speed: the pack's time stage by stage")
    parser.add_argument("--rounds", type=int, default=3, help="--speed: alternating rounds (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all cores)")
    parser.add_argument("--sampling", default="grid", choices=SAMPLING,
                        help="--speed/--profile: the seg map's sampling (default grid: the reference's algorithm)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = loader.load_model(str(TRAINED_SAM_PATH), device="cpu", precision="fp32")
    env = common.environment()
    if args.speed:
        spec, s = (gt.QUALITY_SCENES[0], QUICK_SETTINGS) if args.quick else (gt.BENCH_SCENES[0], SETTINGS)
        scene = gt.quality_scene(spec)
        args.rounds = 1 if args.quick else args.rounds
        print(f"# speed: trained SAM fixture, held-out scene {spec.width}x{spec.height} with {len(scene)} shapes, "
              f"{s.points_per_side}x{s.points_per_side} points, pred_iou {s.pred_iou_thresh}, stability "
              f"{s.stability_score_thresh}; {env}")
        r = speed(model, scene.image, s, args.rounds, args.sampling)
        for i, ((ow, oc), (rw, rc)) in enumerate(zip(r["times"]["ours"], r["times"]["reference"])):
            print(f"round {i + 1}: seg map {ow:.2f} s wall / {oc:.2f} s CPU; SamAutomaticMaskGenerator {rw:.2f} s "
                  f"wall / {rc:.2f} s CPU; {rw / ow:.1f}x wall, {rc / oc:.1f}x CPU")
        (ow, oc), (rw, rc) = r["median"]["ours"], r["median"]["reference"]
        print(f"median: seg map {ow:.2f} s ({oc:.2f} s CPU), reference {rw:.2f} s ({rc:.2f} s CPU): "
              f"**{r['wall_ratio']:.1f}x** wall, {r['cpu_ratio']:.1f}x CPU; segments {r['counts']['ours']} / "
              f"{r['counts']['reference']}; load average now {os.getloadavg()[0]:.2f}")
        if args.profile:
            total, stages = profile(model, scene.image, s, args.sampling)
            print(f"\nwhere one seg map run's {total:.2f} s of CPU go (cProfile on the process clock; its "
                  "overhead is in 'other'):\n\n| stage | CPU s | share |\n|---|---|---|")
            for stage, sec in sorted(stages.items(), key=lambda kv: -kv[1]):
                print(f"| {stage} | {sec:.2f} | {100 * sec / total:.0f} % |")
            rest = total - sum(stages.values())
            print(f"| other (crop loop: indexing, thresholding, Python) | {rest:.2f} | {100 * rest / total:.0f} % |")
        return 0
    specs, settings = (gt.QUALITY_SCENES, QUICK_SETTINGS) if args.quick else (gt.BENCH_SCENES, SETTINGS)
    scenes = gt.quality_scenes(specs)
    print(f"# ground-truth quality: trained SAM fixture, {len(scenes)} held-out scenes, {sum(map(len, scenes))} "
          f"shapes, {settings.points_per_side}x{settings.points_per_side} points, pred_iou "
          f"{settings.pred_iou_thresh}, stability {settings.stability_score_thresh}; {env}\n")
    counts: dict = {}
    found = segmenters(model, settings, counts)
    for fn in found.values():
        fn(scenes[0].image[:64, :64])  # warm-up (allocator; ultralytics builds its predictor on a first call)
    for c in counts.values():
        c.__init__()
    print(gt.table(gt.evaluate(found, scenes)))
    print("\ndecoded (prompt, output) pairs, all scenes: " + "; ".join(f"{m} {c.candidates}" for m, c in counts.items())
          + f"; SamAutomaticMaskGenerator {counts[SAMPLING[0]].candidates} (the grid's)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
