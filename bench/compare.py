"""Benchmarks against the reference implementations, both sides in one run, same checkpoint and image.

    python -m bench.compare                    # MobileSAM architecture, 768x1024 image, 32x32 points
    python -m bench.compare --quick            # ~1-2 minute smoke run (512x512, 16x16 points)
    python -m bench.compare --arch vit_b --device cuda --precision bf16

Sections (each prints times, the ratio, and peak memory of both sides):

(a) seg map: ``samkit.automask.generate_segments`` + painting versus segment-anything's
    ``SamAutomaticMaskGenerator`` + largest-first painting (what other packs wrap), with the
    segments matched (count, mean IoU of matched masks);
(a2) each everything-mode ``sampling`` (grid, hierarchical, object-aware with the FastSAM checkpoint
    below as its proposal model) against ``SamAutomaticMaskGenerator``, the reference run before each
    mode (alternating), same checkpoint and image; segment generation only on both sides. The FastSAM
    checkpoint is calibrated for a number of detections, not for the scene's objects, so object-aware's
    segments here say nothing about quality (tests/test_everything_quality.py does): its time does;
(b) Tiny SAM prompt edit on a cached image versus a cold run (``samkit.tiny_sam_job``);
(c) the FastSAM path (Tiny SAM with a FastSAM checkpoint) versus a bare ``ultralytics.FastSAM`` call;
(d) the remote node's overhead versus bare HTTP round trips against the self-hosted endpoint.

Weights are synthetic (no real weights can be downloaded here); the architectures are the real
full-size ones, so the arithmetic is. Post-processing cost depends on how many masks pass the
filters and what they look like, so the SAM checkpoint is calibrated to the benchmark scene
(``bench/checkpoints.py``): its decoder's output layers are fitted so masks are object-shaped blobs
and a realistic share passes SAM's default thresholds. Each stage's count is printed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from . import common
from .checkpoints import SAM_ARCHS, fastsam_checkpoint, sam_checkpoint
from .scenes import make_scene
from .common import fmt_s, measure_memory, print_table, timed

common.ensure_repo_on_path()

from samkit import loader  # noqa: E402
from samkit.automask import AutoMaskSettings, FilterCounts, generate_segments  # noqa: E402
from samkit.automask_sampling import fastsam_proposals  # noqa: E402
from samkit.painting import paint_segments  # noqa: E402
from samkit.sampling_params import SAMPLING  # noqa: E402


# ------------------------------------------------------------------ inputs


def load_sam(path: Path, device: torch.device):
    """The benchmark checkpoint through the pack's own loader (the runner both sides share)."""
    model = loader.load_model(str(path), device="gpu" if device.type == "cuda" else "cpu", precision="fp32")
    return model.runner


# ------------------------------------------------------------------ (a) seg map


def paint_reference(records: list, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Largest-first painting of SamAutomaticMaskGenerator records (what seg-map wrappers do)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    for rec in sorted(records, key=lambda r: r["area"], reverse=True):
        out[rec["segmentation"]] = rng.integers(0, 256, 3)
    return out


def matched_ious(ours: torch.Tensor, reference: list) -> tuple[int, float]:
    """Greedy one-to-one matching by IoU; (matched count, mean IoU of the matches)."""
    if not len(reference) or not len(ours):
        return 0, 0.0
    a = ours.flatten(1).float().cpu()
    b = torch.stack([torch.as_tensor(r["segmentation"]).flatten() for r in reference]).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    iou = (inter / union.clamp(min=1)).numpy()
    used_a, used_b, found = set(), set(), []
    for i, j in sorted(np.ndindex(*iou.shape), key=lambda ij: -iou[ij]):
        if i in used_a or j in used_b or iou[i, j] < 0.5:
            continue
        used_a.add(i), used_b.add(j), found.append(iou[i, j])
    return len(found), float(np.mean(found)) if found else 0.0


def bench_segmap(sam, image: np.ndarray, pps: int, device: torch.device, pred_iou: float, stability: float) -> dict:
    from segment_anything import SamAutomaticMaskGenerator

    settings = AutoMaskSettings(points_per_side=pps, pred_iou_thresh=pred_iou, stability_score_thresh=stability)
    h, w = image.shape[:2]
    generate_segments(sam, image[:64, :64], settings)  # warm-up (allocator, kernels)
    with measure_memory(device) as ref_mem:
        (records, ref_map), ref_s = timed(lambda: (lambda r: (r, paint_reference(r, h, w)))(
            SamAutomaticMaskGenerator(sam, **settings.reference_kwargs()).generate(image)), device)
    counts = FilterCounts()
    with measure_memory(device) as our_mem:
        (segments, our_map), our_s = timed(lambda: (lambda s: (s, paint_segments(s.masks, seed=0)))(
            generate_segments(sam, image, settings, counts)), device)
    matched, mean_iou = matched_ious(segments.masks, records)
    return dict(ref_s=ref_s, ours_s=our_s, speedup=ref_s / our_s, ref_count=len(records), our_count=len(segments),
                matched=matched, mean_iou=mean_iou, ref_mem=ref_mem.describe(), our_mem=our_mem.describe(),
                counts=counts.describe())


def bench_sampling(sam, image: np.ndarray, pps: int, device: torch.device, pred_iou: float, stability: float,
                   proposal_model, proposal_size: int, reference: bool = True) -> list[dict]:
    """(a2): per sampling mode, the reference then the mode (alternating), one run each; with
    ``reference`` False the modes alone (for sizes where the reference would take many minutes)."""
    from segment_anything import SamAutomaticMaskGenerator

    settings = AutoMaskSettings(points_per_side=pps, pred_iou_thresh=pred_iou, stability_score_thresh=stability)
    proposals = fastsam_proposals(proposal_model, size=proposal_size)
    proposals(image[:64, :64])  # warm-up: ultralytics builds its predictor on the first call
    out = []
    for mode in SAMPLING:
        records, ref_s = (timed(lambda: SamAutomaticMaskGenerator(sam, **settings.reference_kwargs()).generate(image),
                                device) if reference else ([], float("nan")))
        counts = FilterCounts()
        segments, our_s = timed(lambda: generate_segments(sam, image, settings, counts, sampling=mode, proposals=proposals),
                                device)
        matched, mean_iou = matched_ious(segments.masks, records)
        out.append(dict(mode=mode, ref_s=ref_s, ours_s=our_s, speedup=ref_s / our_s, ref_count=len(records),
                        our_count=len(segments), matched=matched, mean_iou=mean_iou, counts=counts.describe()))
    return out


# ------------------------------------------------------------------ (b) prompt edit


def bench_prompt_edit(model, image: np.ndarray, device: torch.device) -> dict:
    from samkit.embedding_cache import embeddings
    from samkit.tiny_sam_job import TinySamRequest, segment_with_prompts

    h, w = image.shape[:2]
    tensor = torch.from_numpy(image).float()[None] / 255
    first = TinySamRequest(point_prompt=f"[[{w // 3},{h // 3}]]", point_label="[1]", confidence=0.0)
    edit = TinySamRequest(point_prompt=f"[[{w // 3},{h // 3}],[{2 * w // 3},{h // 2}]]", point_label="[1,0]",
                          box_prompt=f"[[{w // 4},{h // 4},{w // 3},{h // 3}]]", confidence=0.0)
    embeddings.clear()
    with measure_memory(device) as cold_mem:
        _, cold_s = timed(lambda: segment_with_prompts(model, tensor, first), device)
    calls = embeddings.encoder_calls
    edits = []
    with measure_memory(device) as edit_mem:
        for _ in range(5):
            edits.append(timed(lambda: segment_with_prompts(model, tensor, edit), device)[1])
    return dict(cold_s=cold_s, edit_s=float(np.median(edits)), ratio=float(np.median(edits)) / cold_s,
                encoder_runs_during_edits=embeddings.encoder_calls - calls,
                cold_mem=cold_mem.describe(), edit_mem=edit_mem.describe())


# ------------------------------------------------------------------ (c) FastSAM


def bench_fastsam(path: Path, image: np.ndarray, size: int, device: torch.device) -> dict:
    from ultralytics import FastSAM

    from samkit.tiny_sam_job import TinySamRequest, segment_with_prompts

    h, w = image.shape[:2]
    box = [w // 4, h // 4, w // 2, h // 2]
    bare = FastSAM(str(path))
    model = loader.load_model(str(path), device=device.type if device.type == "cpu" else "gpu", precision="fp32")
    tensor = torch.from_numpy(image).float()[None] / 255
    request = TinySamRequest(size=size, confidence=0.4, box_prompt=f"[{box}]")
    bgr = np.ascontiguousarray(image[..., ::-1])

    def run_bare():
        return bare(bgr, device=str(device), imgsz=size, conf=0.4, iou=0.9, retina_masks=True, verbose=False,
                    bboxes=[[box[0], box[1], box[0] + box[2], box[1] + box[3]]])

    def run_ours():
        return segment_with_prompts(model, tensor, request)

    run_bare(), run_ours()  # warm-up: ultralytics builds its predictor on the first call
    bare_t, our_t = [], []
    with measure_memory(device) as bare_mem:
        bare_t.append(timed(run_bare, device)[1])
    with measure_memory(device) as our_mem:
        our_t.append(timed(run_ours, device)[1])
    for _ in range(4):  # alternating, so a drift in machine load hits both sides alike
        bare_t.append(timed(run_bare, device)[1])
        our_t.append(timed(run_ours, device)[1])
    everything = bare(bgr, device=str(device), imgsz=size, conf=0.4, iou=0.9, retina_masks=True, verbose=False)[0]
    b, o = float(np.median(bare_t)), float(np.median(our_t))
    return dict(bare_s=b, ours_s=o, overhead=o / b - 1, instances=len(everything),
                bare_mem=bare_mem.describe(), our_mem=our_mem.describe())


# ------------------------------------------------------------------ (d) remote


def bench_remote(model_path: Path, image: np.ndarray, device: torch.device, rounds: int) -> dict:
    import httpx

    from samkit.fal import remote
    from samkit.fal.handlers import tiny_sam_handler
    from samkit.fal.hosting import BackgroundServer
    from samkit.fal.jobs import ServerSettings
    from samkit.fal.keys import Target
    from samkit.fal.schemas import png_data_uri
    from samkit.fal.server import FalServer
    from samkit.images import encode_png

    model = loader.load_model(str(model_path), device="cpu", precision="fp32")
    settings = ServerSettings(require_key=False)
    server = BackgroundServer(FalServer({"fal-ai/tiny-sam": tiny_sam_handler(model)}, settings))
    base = server.start()
    try:
        h, w = image.shape[:2]
        tensor = torch.from_numpy(image).float()[None] / 255
        args = dict(size=1024, confidence=0.0, box_prompt="[[0,0,0,0]]", point_prompt=f"[[{w // 2},{h // 2}]]",
                    point_label="[1]")
        target = Target("bench", base, None, "bench")

        def node_call():
            return remote.tiny_sam(tensor, target=target, timeout=120, **args)

        def bare_call():
            body = {"image_url": png_data_uri(encode_png(tensor[0])), "size": 1024, "confidence": 0.0,
                    "point_prompt": [[w // 2, h // 2]], "point_label": [1], "box_prompt": [[0, 0, 0, 0]]}
            with httpx.Client(timeout=60) as client:
                sub = client.post(f"{base}/fal-ai/tiny-sam", json=body).json()
                for _ in range(2400):  # bounded: 2400 x 25 ms = 60 s
                    if client.get(sub["status_url"]).json()["status"] == "COMPLETED":
                        break
                    time.sleep(0.025)
                url = client.get(sub["response_url"]).json()["image"]["url"]
                return client.get(url).content

        node_call(), bare_call()  # warm-up: model, embedding cache, connections
        node_t = [timed(node_call, device)[1] for _ in range(rounds)]
        bare_t = [timed(bare_call, device)[1] for _ in range(rounds)]
    finally:
        server.stop()
    n, b = float(np.median(node_t)), float(np.median(bare_t))
    return dict(node_s=n, bare_s=b, overhead=n / b - 1)


# ------------------------------------------------------------------ main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--arch", default="vit_t", choices=list(SAM_ARCHS))
    parser.add_argument("--size", default="768x1024", help="image HxW (default 768x1024)")
    parser.add_argument("--points-per-side", type=int, default=32)
    # SAM's defaults: the calibrated checkpoints (bench/checkpoints.py) are fitted to them
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--fastsam-scale", default="s", choices=["n", "s", "x"])
    parser.add_argument("--pack-only", action="store_true",
                        help="(a2) times the sampling modes without the reference runs")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: segmap,sampling,prompt,fastsam,remote")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.points_per_side = "512x512", 16
    device = common.setup(args)
    h, w = (int(v) for v in args.size.lower().split("x"))
    scene = make_scene(h, w, seed=0)
    image = scene.image
    skip = set(filter(None, args.skip.split(",")))
    rows = []
    print(f"# SAM Kit vs reference, {args.arch}, image {h}x{w}, {common.environment()}")
    sam_path = sam_checkpoint(args.arch, scene, {"h": h, "w": w, "seed": 0}, args.cache_dir)
    sam = load_sam(sam_path, device)
    if "segmap" not in skip:
        r = bench_segmap(sam, image, args.points_per_side, device, args.pred_iou_thresh, args.stability_score_thresh)
        print(f"(a) seg map, {args.points_per_side}x{args.points_per_side} points: reference {fmt_s(r['ref_s'])} "
              f"({r['ref_count']} masks, {r['ref_mem']}), ours {fmt_s(r['ours_s'])} ({r['our_count']} masks, "
              f"{r['our_mem']}); {r['speedup']:.1f}x faster; matched {r['matched']}/{r['ref_count']}, "
              f"mean IoU {r['mean_iou']:.3f}")
        print(f"    ours: {r['counts']}")
        rows.append(("seg map vs SamAutomaticMaskGenerator + painting", f"{fmt_s(r['ref_s'])} / {fmt_s(r['ours_s'])}",
                     f"{r['speedup']:.1f}x faster", f"{r['matched']}/{r['ref_count']} masks matched, IoU {r['mean_iou']:.3f}; "
                     f"{r['ref_mem']} / {r['our_mem']}"))
    fs_size = 640 if args.quick else 1024
    fs_path = None
    if not {"sampling", "fastsam"} <= skip:
        # class biases set so ~60 instances pass confidence 0.4 on this image, as a real
        # FastSAM finds on a busy photo (untrained, either none or max_det=300 would)
        fs_path = fastsam_checkpoint(image, {"h": h, "w": w, "seed": 0}, args.cache_dir, scale=args.fastsam_scale,
                                     imgsz=fs_size)
    if "sampling" not in skip:
        fs_model = loader.load_model(str(fs_path), device=args.loader_device, precision="fp32")
        for r in bench_sampling(sam, image, args.points_per_side, device, args.pred_iou_thresh,
                                args.stability_score_thresh, fs_model, fs_size, reference=not args.pack_only):
            if args.pack_only:
                print(f"(a2) sampling {r['mode']}: ours {fmt_s(r['ours_s'])} ({r['our_count']} masks); {r['counts']}")
                continue
            print(f"(a2) sampling {r['mode']}: reference {fmt_s(r['ref_s'])} ({r['ref_count']} masks), ours "
                  f"{fmt_s(r['ours_s'])} ({r['our_count']} masks); {r['speedup']:.1f}x faster; matched "
                  f"{r['matched']}/{r['ref_count']}, mean IoU {r['mean_iou']:.3f}")
            print(f"    ours: {r['counts']}")
            rows.append((f"seg map, sampling {r['mode']} vs SamAutomaticMaskGenerator", f"{fmt_s(r['ref_s'])} / "
                         f"{fmt_s(r['ours_s'])}", f"{r['speedup']:.1f}x faster",
                         f"{r['matched']}/{r['ref_count']} reference masks matched, IoU {r['mean_iou']:.3f}; {r['counts']}"))
    loaded = loader.load_model(str(sam_path), device=args.loader_device, precision=args.precision)
    loads = loader.load_count
    if "prompt" not in skip:
        r = bench_prompt_edit(loaded, image, device)
        print(f"(b) prompt edit: cold {fmt_s(r['cold_s'])} ({r['cold_mem']}), edit {fmt_s(r['edit_s'])} "
              f"({r['edit_mem']}) = {100 * r['ratio']:.1f}% of cold; encoder runs during edits: "
              f"{r['encoder_runs_during_edits']}")
        rows.append(("Tiny SAM prompt edit vs cold run", f"{fmt_s(r['cold_s'])} / {fmt_s(r['edit_s'])}",
                     f"{100 * r['ratio']:.1f}% of cold", f"encoder runs during edits: {r['encoder_runs_during_edits']}"))
    again = loader.load_model(str(sam_path), device=args.loader_device, precision=args.precision)
    print(f"    repeated load: same model object {again is loaded}, loads {loader.load_count - loads}")
    if "fastsam" not in skip:
        r = bench_fastsam(fs_path, image, fs_size, device)
        print(f"(c) FastSAM-{args.fastsam_scale} at {fs_size}: bare ultralytics {fmt_s(r['bare_s'])} ({r['bare_mem']}), "
              f"ours {fmt_s(r['ours_s'])} ({r['our_mem']}); overhead {100 * r['overhead']:+.1f}% "
              f"({r['instances']} instances)")
        rows.append((f"FastSAM-{args.fastsam_scale} path vs bare ultralytics.FastSAM", f"{fmt_s(r['bare_s'])} / {fmt_s(r['ours_s'])}",
                     f"{100 * r['overhead']:+.1f}%", f"{r['instances']} instances"))
    if "remote" not in skip:
        r = bench_remote(sam_path, image, device, rounds=3 if args.quick else 5)
        print(f"(d) remote node vs bare HTTP round trip (self-hosted, 127.0.0.1): bare {fmt_s(r['bare_s'])}, "
              f"node {fmt_s(r['node_s'])}; overhead {100 * r['overhead']:+.1f}%")
        rows.append(("remote node vs bare HTTP (self-hosted)", f"{fmt_s(r['bare_s'])} / {fmt_s(r['node_s'])}",
                     f"{100 * r['overhead']:+.1f}%", ""))
    print_table(("comparison", "reference / ours", "ratio", "notes"), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
