"""``python -m samkit serve``: arguments, accepted keys, models → handlers → :func:`.hosting.serve`.

    python -m samkit serve --model mobile_sam.pt --key-file ~/.config/comfyui-sam-kit/server-keys.txt
    python -m samkit serve --tiny-sam-model FastSAM-s.pt --segmap-model mobile_sam.pt --no-require-key

What the server does: :mod:`.server`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from pathlib import Path
from typing import Optional

from .. import runtime
from .. import sampling_params as S
from . import schemas
from .handlers import segmentation_map_handler, tiny_sam_handler
from .hosting import serve
from .jobs import Handler, ServerSettings
from .server import FalServer
from .transport import is_loopback_host
from .url_fetch import OutboundPolicy, parse_hosts
from .web_edges import parse_networks, parse_origins

log = logging.getLogger("comfyui-sam-kit.fal.server")

DEFAULT_PORT = 8765


def read_key_file(path: str | Path) -> tuple:
    """Accepted keys, one per line (blank lines and ``#`` comments skipped)."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read the key file {path}: {exc.strerror}") from None
    keys = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if any(ord(c) < 0x21 or ord(c) > 0x7E for c in line):
            raise ValueError(f"{path} line {n}: a key must be printable ASCII without spaces")
        keys.append(line)
    if not keys:
        raise ValueError(f"the key file {path} lists no keys")
    return tuple(keys)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m samkit serve",
                                description="Serve fal-ai/tiny-sam and fal-ai/image-preprocessors/sam over fal's queue "
                                            "protocol, with local models.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free port)")
    p.add_argument("--model", help="model for both endpoints (FastSAM, MobileSAM, TinySAM or SAM): a path (absolute, "
                                   "~/..., ./..., ../..., or a name that exists from the current folder), else a "
                                   "file name in the model folder")
    p.add_argument("--tiny-sam-model", help="model for fal-ai/tiny-sam only (overrides --model)")
    p.add_argument("--segmap-model", help="model for fal-ai/image-preprocessors/sam only (overrides --model)")
    p.add_argument("--device", default="auto", choices=["auto", "gpu", "cpu"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--workers", type=int, default=1, help="jobs run at once (default 1; a model runs one job at a time)")
    p.add_argument("--max-queue", type=int, default=16, help="waiting jobs before submits get 429 (default 16)")
    p.add_argument("--result-ttl", type=float, default=600.0, help="seconds results stay available (default 600)")
    p.add_argument("--key-file", help="file with the accepted keys, one per line")
    p.add_argument("--no-require-key", dest="require_key", action="store_false", default=True,
                   help="accept requests without a key (only sensible on 127.0.0.1)")
    p.add_argument("--public-url", help="URL clients use to reach this server (behind a reverse proxy); wins over "
                                        "forwarded headers")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="IP_OR_NETWORK",
                   help="believe Forwarded / X-Forwarded-Proto / X-Forwarded-Host from this peer (repeatable), "
                        "e.g. 127.0.0.1 for a TLS front on this machine")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let browser apps on this origin call the server (repeatable; * for any)")
    p.add_argument("--fetch-host", action="append", default=[], metavar="HOST",
                   help="fetch https image_url from this host (repeatable; *.example.com for sub-domains). "
                        "Default: none, images must come as data URIs")
    p.add_argument("--fetch-max-mb", type=float, default=20.0, help="largest image download, MiB (default 20)")
    p.add_argument("--fetch-timeout", type=float, default=20.0, help="seconds for a download, redirects included "
                                                                     "(default 20)")
    p.add_argument("--webhook-host", action="append", default=[], metavar="HOST",
                   help="deliver ?fal_webhook= callbacks to this host (repeatable). Default: none, a submit with a "
                        "webhook gets 422")
    p.add_argument("--webhook-retries", type=int, default=5, help="tries after the first failed delivery (default 5)")
    p.add_argument("--allow-private-addresses", action="store_true",
                   help="let image fetches and webhooks reach private, loopback and link-local addresses (a LAN "
                        "file server); off by default")
    p.add_argument("--points-per-side", type=int, default=32, help="seg map: point grid per side")
    p.add_argument("--pred-iou-thresh", type=float, default=0.88, help="seg map: predicted quality threshold")
    p.add_argument("--stability-score-thresh", type=float, default=0.95, help="seg map: stability threshold")
    p.add_argument("--min-mask-region-area", type=int, default=0, help="seg map: remove regions below this many pixels")
    p.add_argument("--sampling", default=S.DEFAULT_SAMPLING, choices=list(S.SAMPLING),
                   help=f"everything mode's prompts when a request gives no 'sampling' (default {S.DEFAULT_SAMPLING}): "
                        + "; ".join(f"{k}: {v}" for k, v in S.HELP.items()))
    p.add_argument("--proposal-model", help="FastSAM model whose boxes object-aware sampling decodes (e.g. FastSAM-s.pt)")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tiny_name, segmap_name = args.tiny_sam_model or args.model, args.segmap_model or args.model
    if not (tiny_name or segmap_name):
        print("error: give --model (or --tiny-sam-model / --segmap-model)", file=sys.stderr)
        return 2
    if args.workers < 1 or args.max_queue < 1 or args.result_ttl <= 0:
        print("error: --workers and --max-queue must be at least 1 and --result-ttl positive", file=sys.stderr)
        return 2
    try:
        keys = read_key_file(args.key_file) if args.key_file else ()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        trusted, origins = parse_networks(args.trusted_proxy), parse_origins(args.cors_origin)
        fetch_hosts, hook_hosts = parse_hosts(args.fetch_host, "--fetch-host"), parse_hosts(args.webhook_host, "--webhook-host")
        for option, value in (("--fetch-max-mb", args.fetch_max_mb), ("--fetch-timeout", args.fetch_timeout),
                              ("--result-ttl", args.result_ttl)):
            if not math.isfinite(value):  # NaN passes every "<= 0" check and then never times out
                raise ValueError(f"{option} must be a finite number, not {value}")
        if args.fetch_max_mb <= 0 or args.fetch_timeout <= 0 or args.webhook_retries < 0:
            raise ValueError("--fetch-max-mb and --fetch-timeout must be positive and --webhook-retries at least 0")
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must be from 0 to 65535, not {args.port}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fetch = OutboundPolicy(hosts=fetch_hosts, allow_private=args.allow_private_addresses,
                           max_bytes=int(args.fetch_max_mb * 1024 * 1024),
                           timeout=args.fetch_timeout)
    hooks = OutboundPolicy(hook_hosts, args.allow_private_addresses)
    if args.require_key and not keys:
        print("error: give --key-file with the keys clients must send (one per line), or --no-require-key to accept "
              "anyone who can reach this server", file=sys.stderr)
        return 2
    if not args.require_key and not is_loopback_host(args.host):
        log.warning("no key required and bound to %s: anyone who can reach this port can use the models", args.host)

    from ..automask import AutoMaskSettings
    from ..loader import load_model

    # A bar for model downloads at start-up; jobs log their progress instead (install_job_hooks).
    runtime.install(progress=lambda total, label="": runtime.TerminalProgress(total, label))
    handlers: dict[str, Handler] = {}
    try:
        proposals = load_model(args.proposal_model, args.device, args.precision) if args.proposal_model else None
        if proposals is not None and not proposals.is_fastsam:
            raise ValueError(f"--proposal-model {args.proposal_model}: a FastSAM model is needed (FastSAM-s.pt, "
                             f"FastSAM-x.pt), not a {proposals.family!r} model")
        if args.sampling == S.OBJECT_AWARE and proposals is None:
            raise ValueError(S.missing_proposals())
        if tiny_name:
            handlers[schemas.TINY_SAM] = tiny_sam_handler(load_model(tiny_name, args.device, args.precision),
                                                          args.sampling, proposals)
        if segmap_name:
            settings = AutoMaskSettings(points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
                                        stability_score_thresh=args.stability_score_thresh,
                                        min_mask_region_area=args.min_mask_region_area).validate()
            # the loader caches by file, so one --model is loaded once for both endpoints
            model = load_model(segmap_name, args.device, args.precision)
            handlers[schemas.SEGMENTATION_MAP] = segmentation_map_handler(model, settings, sampling=args.sampling,
                                                                          proposals=proposals)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = FalServer(handlers, ServerSettings(workers=args.workers, max_queue=args.max_queue,
                                                result_ttl=args.result_ttl, keys=keys, require_key=args.require_key,
                                                public_url=args.public_url, trusted_proxies=trusted,
                                                cors_origins=origins, fetch=fetch, webhooks=hooks,
                                                webhook_retries=args.webhook_retries))
    try:
        asyncio.run(serve(server, args.host, args.port))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
