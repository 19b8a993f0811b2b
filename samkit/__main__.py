"""Command line: the pack's jobs on image files, outside ComfyUI.

    python -m samkit segmap photo.jpg --model mobile_sam.pt --out out/
    python -m samkit tinysam photo.jpg --model FastSAM-s.pt --point-prompt "[[320,240]]" --point-label "[1]"
    python -m samkit models                  # what is installed and what can be downloaded
    python -m samkit download mobile_sam.pt  # fetch a known model into the model folder
    python -m samkit serve --port 8765 ...   # the self-hosted fal-compatible endpoint

Weights download on first use into the model folder (``SAMKIT_MODELS_DIR`` or a per-user
folder; inside ComfyUI, models/sams). ``--model`` is read as a path first, as a shell would:
``./x.pth``, ``../x.pth``, ``~/x.pth`` and absolute paths are only ever that file; any other name
(``x.pth``, ``sub/x.pth``) is the file at that path from the current folder if there is one, else
the file of that name in the model folder, else a known model to download
(``model_folders.find_model_file``, ``model_source.resolve_model_path``). Image files are
decoded by ``images.read_image``'s rules.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import runtime
from . import sampling_params as S
from . import tiny_sam_params as P


def _add_model_args(parser: argparse.ArgumentParser, default_model: str) -> None:
    parser.add_argument("--model", default=default_model,
                        help="model file: a path (absolute, ~/..., ./..., ../..., or any name that exists from the "
                             "current folder), else a file name in the model folder; a known model that is in "
                             f"neither is downloaded (default {default_model})")
    parser.add_argument("--device", default="auto", choices=["auto", "gpu", "cpu"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--out", default="out", help="output folder (created if missing)")


def _inputs(paths: list[str]) -> list[Path]:
    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}))
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{name} is not an image file or folder")
    if not files:
        raise ValueError(f"no images to process in {', '.join(paths)} (.png, .jpg, .webp, .bmp or .tif files)")
    return files


def _out_dir(name: str) -> Path:
    """The output folder, created now: a bad --out fails before any model work, not after it."""
    out = Path(name)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {name}: cannot create the output folder ({exc.strerror or exc})") from None
    return out


def _load(args):
    from .loader import load_model

    return load_model(args.model, device=args.device, precision=args.precision)


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sampling", default=S.DEFAULT_SAMPLING, choices=list(S.SAMPLING),
                        help=f"everything mode's prompts for SAM-family models (default {S.DEFAULT_SAMPLING}): "
                             + "; ".join(f"{k}: {v}" for k, v in S.HELP.items()))
    parser.add_argument("--proposal-model", help="object-aware sampling: the FastSAM model whose object boxes SAM "
                                                 "decodes (e.g. FastSAM-s.pt; found like --model)")


def _proposals(args):
    """The --proposal-model, loaded (a FastSAM model); None without one."""
    if not args.proposal_model:
        return None
    from .loader import load_model

    model = load_model(args.proposal_model, device=args.device, precision=args.precision)
    if not model.is_fastsam:
        raise ValueError(f"--proposal-model {args.proposal_model}: a FastSAM model is needed (FastSAM-s.pt, "
                         f"FastSAM-x.pt), not a {model.family!r} model")
    return model


def _save(image, path: Path) -> None:
    from .images import encode_png, save_atomically

    save_atomically(encode_png(image), path)
    print(f"wrote {path}")


def _save_mask(mask, path: Path) -> None:
    from .images import encode_mask_png, save_atomically

    save_atomically(encode_mask_png(mask), path)


def cmd_segmap(args) -> int:
    from .automask import AutoMaskSettings
    from .images import load_image_file
    from .segmap import segmentation_map

    files, out = _inputs(args.images), _out_dir(args.out)  # bad arguments fail before a model loads
    settings = AutoMaskSettings(
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        min_mask_region_area=args.min_mask_region_area,
        crop_n_layers=args.crop_n_layers,
    ).validate()
    if args.sampling == S.OBJECT_AWARE and not args.proposal_model:
        raise ValueError(S.missing_proposals())
    model = _load(args)
    proposals = _proposals(args) if model.samples_prompts else None
    for path in files:
        result = segmentation_map(model, load_image_file(path), settings, args.seed,
                                  max_segments=args.max_segments, segment_masks=args.masks,
                                  sampling=args.sampling, proposals=proposals)
        _save(result.seg_map[0], out / f"{path.stem}_segmap.png")
        _save_mask(result.coverage[0], out / f"{path.stem}_coverage.png")
        if args.masks:
            for i in range(result.counts[0]):
                _save_mask(result.segments[i], out / f"{path.stem}_segments" / f"{i:03d}.png")
        print(f"{path.name}: {result.found[0]} segments")
    return 0


def cmd_tinysam(args) -> int:
    from .images import load_image_file
    from .tiny_sam_job import TinySamRequest, segment_with_prompts

    files, out = _inputs(args.images), _out_dir(args.out)  # bad arguments fail before a model loads
    request = TinySamRequest(
        size=args.size,
        confidence=args.confidence,
        iou=args.iou,
        box_prompt=args.box_prompt,
        point_prompt=args.point_prompt,
        point_label=args.point_label,
        sampling=args.sampling,
    ).validate()
    model = _load(args)
    proposals = _proposals(args) if model.samples_prompts else None
    for path in files:
        result = segment_with_prompts(model, load_image_file(path), request, proposals=proposals)
        _save(result.image[0], out / f"{path.stem}_tinysam.png")
        _save_mask(result.mask[0], out / f"{path.stem}_mask.png")
    return 0


def cmd_models(args) -> int:
    from . import model_folders

    for name in model_folders.list_model_choices():
        print(name)
    print(f"model folder: {model_folders.model_dirs()[0]}", file=sys.stderr)
    return 0


def cmd_download(args) -> int:
    from .model_source import resolve_model_path

    for name in args.names:
        print(resolve_model_path(name, download=True, folders_only=True))  # into the model folder
    return 0


def cmd_serve(argv: list[str]) -> int:
    from .fal import cli

    return cli.main(argv) or 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # the server has its own argument parser, logging and progress set-up
        return cmd_serve(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    runtime.install(progress=lambda total, label="": runtime.TerminalProgress(total, label))

    parser = argparse.ArgumentParser(prog="python -m samkit", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segmap", help="segment everything and paint a colour map")
    p.add_argument("images", nargs="+", help="image files or folders")
    _add_model_args(p, "mobile_sam.pt")
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--points-per-batch", type=int, default=64)
    p.add_argument("--pred-iou-thresh", type=float, default=0.88)
    p.add_argument("--stability-score-thresh", type=float, default=0.95)
    p.add_argument("--min-mask-region-area", type=int, default=0)
    p.add_argument("--crop-n-layers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--masks", action="store_true", help="also write every segment as a PNG mask")
    p.add_argument("--max-segments", type=int, default=0,
                   help="with --masks: write only each image's N largest segments (0 = all)")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_segmap)

    p = sub.add_parser("tinysam", help="segment with point and box prompts (fal tiny-sam parameters)")
    p.add_argument("images", nargs="+")
    _add_model_args(p, "FastSAM-s.pt")
    p.add_argument("--size", type=int, default=P.SIZE.default)
    p.add_argument("--confidence", type=float, default=P.CONFIDENCE.default)
    p.add_argument("--iou", type=float, default=P.IOU.default)
    p.add_argument("--box-prompt", default=P.NO_BOX.text, help="[[x,y,w,h],...] in pixels")
    p.add_argument("--point-prompt", default=P.NO_POINT.text, help="[[x,y],...] in pixels")
    p.add_argument("--point-label", default=P.NO_LABEL.text, help="[1,0,...]: 1 foreground, 0 background")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_tinysam)

    p = sub.add_parser("models", help="list installed and downloadable models")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("download", help="download known models into the model folder")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=cmd_download)

    sub.add_parser("serve", help="run the self-hosted fal-compatible endpoint (see: serve --help)")

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
