"""SAM 2.1-tiny against Meta's reference, both sides in one run, same checkpoint and image.

    python -m bench.sam2_compare            # 768x1024 image, 32x32 points (long on a CPU)
    python -m bench.sam2_compare --quick    # 512x512, 16x16 points
    python -m bench.sam2_compare --device cuda --precision bf16

(a) seg map: ``samkit.automask.generate_segments`` on ``Sam2Backend`` + painting versus
    ``sam2.SAM2AutomaticMaskGenerator`` + largest-first painting, with its default settings (the
    segments matched: count, mean IoU);
(b) Tiny SAM prompt edit on a cached image (``samkit.tiny_sam_job``) versus a cold run, and
    versus ``SAM2ImagePredictor`` (``set_image`` + ``predict``) for the same click.

The checkpoint is Meta's real hiera-tiny architecture with synthetic weights
(tools/sam2_synthetic.py: ``calibrate_for_everything``, so masks are stable and a share of
predicted IoUs falls below 0.8); its untrained prompt path gives overlapping masks, so box NMS
keeps few segments: the filter counts are printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from . import common
from .common import fmt_s, measure_memory, print_table, timed
from .compare import matched_ious, paint_reference
from .scenes import make_scene

common.ensure_repo_on_path()

from sam2_synthetic import build_meta_sam2, calibrate_for_everything, meta_model_from, save_sam2_checkpoint  # noqa: E402
from samkit import loader  # noqa: E402
from samkit.automask import FilterCounts, generate_segments  # noqa: E402
from samkit.painting import paint_segments  # noqa: E402
from samkit.sam2_backend import SAM2_DEFAULTS, Sam2Backend  # noqa: E402


def checkpoint(cache_dir: Path) -> tuple[Path, dict]:
    """The calibrated SAM 2.1-tiny file (built once into ``cache_dir``) and its state dict."""
    path = cache_dir / "sam2.1_hiera_tiny_calibrated_v1.pt"
    if not path.is_file():
        state = calibrate_for_everything(build_meta_sam2("t", "2.1", seed=0)).state_dict()
        save_sam2_checkpoint(state, path.with_suffix(".part"))
        path.with_suffix(".part").replace(path)
    return path, torch.load(path, map_location="cpu", weights_only=True)["model"]


def bench_segmap(model, reference_model, image: np.ndarray, pps: int, device: torch.device) -> dict:
    from dataclasses import replace

    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    from samkit import precision

    settings = replace(SAM2_DEFAULTS, points_per_side=pps)
    h, w = image.shape[:2]
    with measure_memory(device) as ref_mem:
        (records, _), ref_s = timed(lambda: (lambda r: (r, paint_reference(r, h, w)))(
            SAM2AutomaticMaskGenerator(reference_model, **settings.reference_kwargs()).generate(image)), device)
    counts = FilterCounts()

    def ours():
        with precision.for_model(model):
            segments = generate_segments(Sam2Backend(model.runner), image, settings, counts)
        return segments, paint_segments(segments.masks, seed=0)

    with measure_memory(device) as our_mem:
        (segments, _), our_s = timed(ours, device)
    matched, mean_iou = matched_ious(segments.masks, records)
    return dict(ref_s=ref_s, ours_s=our_s, speedup=ref_s / our_s, ref_count=len(records), our_count=len(segments),
                matched=matched, mean_iou=mean_iou, ref_mem=ref_mem.describe(), our_mem=our_mem.describe(),
                counts=counts.describe())


def bench_prompt_edit(model, reference_model, image: np.ndarray, device: torch.device) -> dict:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from samkit.embedding_cache import embeddings
    from samkit.tiny_sam_job import TinySamRequest, segment_with_prompts

    h, w = image.shape[:2]
    tensor = torch.from_numpy(image).float()[None] / 255
    first = TinySamRequest(point_prompt=f"[[{w // 3},{h // 3}]]", point_label="[1]", confidence=0.0)
    edit = TinySamRequest(point_prompt=f"[[{w // 3},{h // 3}],[{2 * w // 3},{h // 2}]]", point_label="[1,0]",
                          box_prompt=f"[[{w // 4},{h // 4},{w // 3},{h // 3}]]", confidence=0.0)
    predictor = SAM2ImagePredictor(reference_model)

    def reference():
        predictor.set_image(image)
        return predictor.predict(point_coords=np.array([[w // 3, h // 3]]), point_labels=np.array([1]))

    _, ref_s = timed(reference, device)
    embeddings.clear()
    _, cold_s = timed(lambda: segment_with_prompts(model, tensor, first), device)
    calls = embeddings.encoder_calls
    edits = [timed(lambda: segment_with_prompts(model, tensor, edit), device)[1] for _ in range(5)]
    edit_s = float(np.median(edits))
    return dict(ref_s=ref_s, cold_s=cold_s, edit_s=edit_s, ratio=edit_s / cold_s,
                encoder_runs_during_edits=embeddings.encoder_calls - calls)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--size", default="768x1024", help="image HxW (default 768x1024)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: segmap,prompt")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.points_per_side = "512x512", 16
    device = common.setup(args)
    h, w = (int(v) for v in args.size.lower().split("x"))
    image = make_scene(h, w, seed=0).image
    skip = set(filter(None, args.skip.split(",")))
    print(f"# SAM Kit vs Meta's sam2, SAM 2.1 hiera-tiny, image {h}x{w}, {common.environment()}")
    path, state = checkpoint(args.cache_dir)
    model = loader.load_model(str(path), device=args.loader_device, precision=args.precision)
    reference_model = meta_model_from(state).to(device)
    del state
    rows = []
    if "segmap" not in skip:
        r = bench_segmap(model, reference_model, image, args.points_per_side, device)
        print(f"(a) seg map, {args.points_per_side}x{args.points_per_side} points: reference {fmt_s(r['ref_s'])} "
              f"({r['ref_count']} masks, {r['ref_mem']}), ours {fmt_s(r['ours_s'])} ({r['our_count']} masks, "
              f"{r['our_mem']}); {r['speedup']:.2f}x; matched {r['matched']}/{r['ref_count']}, mean IoU {r['mean_iou']:.3f}")
        print(f"    ours: {r['counts']}")
        rows.append(("SAM 2.1-tiny seg map vs SAM2AutomaticMaskGenerator + painting",
                     f"{fmt_s(r['ref_s'])} / {fmt_s(r['ours_s'])}", f"{r['speedup']:.2f}x",
                     f"{r['matched']}/{r['ref_count']} matched, IoU {r['mean_iou']:.3f}"))
    if "prompt" not in skip:
        r = bench_prompt_edit(model, reference_model, image, device)
        print(f"(b) prompt edit: reference set_image+predict {fmt_s(r['ref_s'])}, ours cold {fmt_s(r['cold_s'])}, "
              f"edit {fmt_s(r['edit_s'])} = {100 * r['ratio']:.1f}% of cold; encoder runs during edits: "
              f"{r['encoder_runs_during_edits']}")
        rows.append(("SAM 2.1-tiny prompt edit vs cold run (reference: set_image + predict)",
                     f"{fmt_s(r['cold_s'])} / {fmt_s(r['edit_s'])}", f"{100 * r['ratio']:.1f}% of cold",
                     f"reference {fmt_s(r['ref_s'])}; encoder runs during edits: {r['encoder_runs_during_edits']}"))
    print_table(("comparison", "reference (cold) / ours", "ratio", "notes"), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
