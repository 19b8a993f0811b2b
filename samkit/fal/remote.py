"""The remote jobs as the nodes run them: images in, images and masks out.

Each image of a batch becomes one request (fal's inputs hold one image), sent as a lossless
PNG data URI. The requests run concurrently on a small thread pool; only the calling thread
talks to the host (progress, status text, interrupt), because ComfyUI ties those to the
executing node through context variables that worker threads do not see.

What the results mean:

* ``fal-ai/tiny-sam`` answers one "combined image of all detected masks": the input with each
  object painted over it in a colour (FastSAM's plot; this pack's server paints the same way).
  The mask is therefore *where the result differs from the input*. When the file is a lossless
  PNG at the input's size that difference is exact (a pixel is missed only if an object's colour
  equals that pixel's colour in all three channels); otherwise (resized or lossy) a tolerance
  of :data:`OVERLAY_TOLERANCE` levels is used. Two other shapes are recognised too: a
  transparent PNG (the alpha channel is the mask) and a black-and-white mask image (white is
  the mask). A result equal to the input means nothing was found: an empty mask.
* ``fal-ai/image-preprocessors/sam`` answers a colour segmentation map on black; coverage is
  every pixel brighter than :data:`COVERAGE_LEVEL` in some channel. The map is resized to the
  input with nearest-neighbour sampling, so its colours stay exact for a colour picker.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL import Image

from .. import runtime
from ..images import ImageDecodeError, as_image_batch, png_bytes, read_image_and_alpha, to_uint8_rgb
from ..prompts import parse_prompts
from ..tiny_sam_params import CONFIDENCE, NO_BOX, NO_LABEL, NO_POINT, SIZE
from . import schemas
from .client import FalClient, Update
from .downloads import ResultDownloader
from .errors import FalDownloadError, FalError, Stopped, redact
from .keys import Target, resolve_target
from .polling import reason
from .transport import is_loopback_host

log = logging.getLogger("comfyui-sam-kit.fal")

#: requests of one batch in flight at once (fal queues what is over the account's limit anyway)
MAX_CONCURRENT = 4
#: per-channel difference that counts as "painted" when the result is resized or lossy
OVERLAY_TOLERANCE = 24
#: a seg map pixel brighter than this (0..255) in some channel is covered
COVERAGE_LEVEL = 8
DEFAULT_TIMEOUT_S = 300


@dataclass
class RemoteImage:
    request_id: str
    pixels: np.ndarray  # [h,w,3] uint8 at the result's own size
    alpha: Optional[np.ndarray]  # [h,w] uint8 when the file had transparency
    lossless: bool


# ------------------------------------------------------------------ images


def encode_input_png(image_hw3: torch.Tensor) -> tuple[bytes, np.ndarray]:
    """PNG bytes of one image and the exact uint8 pixels they hold."""
    pixels = to_uint8_rgb(image_hw3)
    return png_bytes(pixels, compress_level=4), pixels  # level 4: uploads are sent once, speed over size


def data_uri_for(png: bytes, index: int) -> str:
    uri = schemas.png_data_uri(png)
    if len(uri) > schemas.MAX_DATA_URI_CHARS:
        raise ValueError(
            f"image {index + 1} is {len(png) / 1e6:.1f} MB as PNG; fal accepts images up to about 7.5 MB "
            "inline. Scale it down first (for example with ImageScale to 2048 px on the long side)."
        )
    return uri


def decode_result(data: bytes, request_id: str) -> RemoteImage:
    try:
        pixels, alpha, lossless = read_image_and_alpha(data, f"the result file of request {request_id}")
    except ImageDecodeError as exc:
        raise FalDownloadError(str(exc), request_id=request_id) from None
    return RemoteImage(request_id, pixels, alpha, lossless)


def _resize(arr: np.ndarray, h: int, w: int, resample: Image.Resampling) -> np.ndarray:
    if arr.shape[:2] == (h, w):
        return arr
    return np.array(Image.fromarray(arr).resize((w, h), resample))


def _is_black_and_white(pixels: np.ndarray) -> bool:
    p = pixels.astype(np.int16)
    grey = (p.max(-1) - p.min(-1)) <= 16
    lum = p.mean(-1)
    extreme = (lum <= 32) | (lum >= 223)
    return grey.mean() >= 0.995 and extreme.mean() >= 0.98


def overlay_mask(result: RemoteImage, input_u8: np.ndarray) -> np.ndarray:
    """Bool ``[H,W]`` mask (input size) of the objects in a tiny-sam combined image."""
    h, w = input_u8.shape[:2]
    rh, rw = result.pixels.shape[:2]
    if result.alpha is not None:
        return _resize((result.alpha > 127).astype(np.uint8) * 255, h, w, Image.Resampling.BILINEAR) > 127
    # Compare at the smaller of the two sizes: a box filter undoes an upscale exactly, while
    # upscaling the other image would invent pixels that differ everywhere on textured images.
    if rh * rw >= h * w:
        painted, source = _resize(result.pixels, h, w, Image.Resampling.BOX), input_u8
    else:
        painted, source = result.pixels, _resize(input_u8, rh, rw, Image.Resampling.BOX)
    diff = np.abs(painted.astype(np.int16) - source.astype(np.int16)).max(-1)
    exact = result.lossless and (rh, rw) == (h, w)
    changed = diff > (0 if exact else OVERLAY_TOLERANCE)
    if not changed.any():
        mask = changed  # nothing found: the result is the input untouched
    elif _is_black_and_white(painted) and not _is_black_and_white(source):
        mask = painted.astype(np.int16).mean(-1) >= 128  # a black-and-white mask image
    else:
        mask = changed
    if mask.shape != (h, w):
        mask = _resize(mask.astype(np.uint8) * 255, h, w, Image.Resampling.BILINEAR) > 127
    return mask


def coverage_mask(seg_map_u8: np.ndarray) -> np.ndarray:
    return seg_map_u8.max(-1) > COVERAGE_LEVEL


def _to_image(arr: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device=device, dtype=torch.float32).div_(255.0)


def _to_mask(mask: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask)).to(device=device, dtype=torch.float32)


# ------------------------------------------------------------------ running a batch


class _Board:
    """Per-image states, updated by worker threads, shown by the calling thread."""

    STAGE = {"SUBMITTING": 0, "IN_QUEUE": 1, "IN_PROGRESS": 2, "COMPLETED": 3, "FETCHING": 3, "DOWNLOADING": 3, "DONE": 4}

    def __init__(self, count: int, label: str):
        self.count = count
        self.label = label
        self.lines = ["waiting"] * count
        self.stage = [0] * count
        self.events: "queue.Queue[tuple[int, Update]]" = queue.Queue()

    def drain(self) -> bool:
        changed = False
        while True:
            try:
                i, update = self.events.get_nowait()
            except queue.Empty:
                return changed
            changed = True
            self.stage[i] = max(self.stage[i], self.STAGE.get(update.state, 3))
            rid = f" ({update.request_id[:8]})" if update.request_id else ""
            if update.state == "IN_QUEUE":
                pos = "" if update.queue_position is None else f", position {update.queue_position}"
                self.lines[i] = f"in queue{pos}{rid}"
            elif update.state == "IN_PROGRESS":
                last = next((str(entry.get("message", "")) for entry in reversed(update.new_logs)
                             if isinstance(entry, dict) and entry.get("message")), None)
                if last:
                    self.lines[i] = f"running{rid}: {redact(last, limit=100)}"
                elif not self.lines[i].startswith("running"):
                    self.lines[i] = f"running{rid}"
            elif update.state == "SUBMITTING":
                self.lines[i] = "submitting"
            elif update.state in ("COMPLETED", "FETCHING"):
                self.lines[i] = f"fetching result{rid}"
            elif update.state == "DONE":
                self.lines[i] = f"done{rid}"
            else:
                self.lines[i] = f"{update.state.lower()}{rid}"

    def text(self) -> str:
        if self.count == 1:
            return f"{self.label}: {self.lines[0]}"
        if self.count <= 4:
            return "\n".join([self.label] + [f"image {i + 1}: {line}" for i, line in enumerate(self.lines)])
        done = sum(1 for s in self.stage if s >= 4)
        running = sum(1 for s in self.stage if 2 <= s < 4)
        return f"{self.label}: {done}/{self.count} done, {running} running, {self.count - done - running} waiting"


def fetch_image_output(output, request_id: str, downloader: ResultDownloader, endpoint_id: str,
                       target: Target) -> RemoteImage:
    """The one result image of a tiny-sam / seg map answer, downloaded and decoded."""
    try:
        ref = schemas.parse_image_output(output)
    except ValueError as exc:
        raise answer_error(endpoint_id, request_id, exc, output, target) from None
    return decode_result(downloader.fetch(ref.url, request_id), request_id)


def answer_error(endpoint_id: str, request_id: str, exc: Exception, output, target: Target) -> FalError:
    """A result that is not the endpoint's output shape, with the server's own message if it sent one."""
    said = reason(output)  # an error payload sent with HTTP 200
    said = f"; the server said: {redact(said, target.key)}" if said else ""
    return FalError(f"{endpoint_id}: request {request_id}: {exc}{said}", request_id=request_id)


def run_batch(endpoint_id: str, arguments: list[dict], *, target: Target, timeout: float,
              label: str, collect: Optional[Callable] = None) -> list:
    """Run one request per argument dict concurrently; results in order.

    ComfyUI's Cancel (``runtime.interrupted()``) cancels every request in flight, then raises
    the host's interrupt. If one request fails (a timeout included), the others are cancelled
    and the first error is raised, saying how many images had finished. Back-pressure (429)
    is waited out inside each request's timeout (see :mod:`.polling`).

    ``collect(output, request_id, downloader)`` turns one answer into the caller's result (on a
    worker thread, with the key-free downloader); the default is the one output image
    (:func:`fetch_image_output`). ``endpoint_id`` is fal's id; a target that is the pack's
    deployed fal App sends it to that app's route (:meth:`.keys.Target.endpoint_id`).
    """
    endpoint_id = target.endpoint_id(endpoint_id)
    if collect is None:
        def collect(output, request_id, downloader):
            return fetch_image_output(output, request_id, downloader, endpoint_id, target)
    board = _Board(len(arguments), label)
    stop = threading.Event()
    results: list = [None] * len(arguments)

    def job(i: int, client: FalClient, downloader: ResultDownloader) -> None:
        def post(update: Update) -> None:
            board.events.put((i, update))

        request_id, output = client.run(endpoint_id, arguments[i], timeout=timeout, should_stop=stop.is_set,
                                        on_update=post)
        post(Update(request_id, "DOWNLOADING"))
        results[i] = collect(output, request_id, downloader)
        post(Update(request_id, "DONE"))

    interrupted = False
    first_error: Optional[BaseException] = None
    loopback = is_loopback_host(urlsplit(target.base_url).hostname or "")
    with FalClient(target.base_url, target.key, auth_hint=target.auth_hint) as client, \
            ResultDownloader(allow_loopback_http=loopback) as downloader:
        pool = ThreadPoolExecutor(max_workers=min(MAX_CONCURRENT, len(arguments)), thread_name_prefix="samkit-fal")
        bar = runtime.progress(4 * len(arguments), label)
        try:
            pending = {pool.submit(job, i, client, downloader) for i in range(len(arguments))}
            last_text = None
            while pending:
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_EXCEPTION)
                for future in done:
                    exc = future.exception()
                    if exc is not None and not isinstance(exc, Stopped) and first_error is None:
                        first_error = exc
                        stop.set()  # cancel the siblings: their results would be thrown away
                if not interrupted and runtime.interrupted():
                    interrupted = True
                    stop.set()
                if board.drain():
                    bar.set(sum(board.stage))
                    text = board.text()
                    if text != last_text:
                        runtime.status_text(text)
                        last_text = text
        finally:
            stop.set()  # leaving early (an error in this loop): the workers cancel what they started
            pool.shutdown(wait=True)
            bar.close()
    if interrupted:
        runtime.status_text(f"{label}: cancelled")
        runtime.check_interrupt()  # raises the host's own interrupt (and clears its flag)
        raise runtime.Interrupted(f"{label}: cancelled; the remote requests were cancelled")
    if first_error is not None:
        if len(arguments) > 1 and isinstance(first_error, FalError):
            finished = sum(r is not None for r in results)
            first_error.args = (f"{first_error.args[0]} ({finished} of {len(arguments)} images had finished; the "
                                "requests still running were cancelled.)",)
        raise first_error
    return [r for r in results if r is not None]


# ------------------------------------------------------------------ the two jobs


@dataclass
class TinySamRemoteResult:
    image: torch.Tensor  # [B,H,W,3]
    mask: torch.Tensor  # [B,H,W]
    request_ids: list


@dataclass
class SegMapRemoteResult:
    seg_map: torch.Tensor  # [B,H,W,3]
    coverage: torch.Tensor  # [B,H,W]
    request_ids: list


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def tiny_sam(image: torch.Tensor, *, size: int = SIZE.default, confidence: float = CONFIDENCE.default,
             box_prompt=NO_BOX.text, point_prompt=NO_POINT.text, point_label=NO_LABEL.text, bboxes=None,
             positive_coords=None, negative_coords=None, endpoint: str = "fal",
             timeout: float = DEFAULT_TIMEOUT_S, target: Optional[Target] = None) -> TinySamRemoteResult:
    """``fal-ai/tiny-sam`` on each image of the batch. Prompts are read exactly as the local node
    reads them (same parser, same checks against the image size) before anything is sent."""
    batch = as_image_batch(image)
    b, h, w, _ = batch.shape
    SIZE.check(size)
    CONFIDENCE.check(confidence)
    timeout = _check_timeout(timeout)
    prompts = parse_prompts(b, w, h, point_prompt, point_label, box_prompt, bboxes, positive_coords, negative_coords)
    target = target or resolve_target(endpoint)
    inputs, arguments = [], []
    for i in range(b):
        png, pixels = encode_input_png(batch[i])
        inputs.append(pixels)
        p = prompts[i]
        arguments.append(schemas.tiny_sam_arguments(data_uri_for(png, i), size, confidence, p.points, p.labels, p.boxes))
    results = run_batch(schemas.TINY_SAM, arguments, target=target, timeout=timeout, label="Tiny SAM (fal)")
    out = runtime.output_device()
    images = [_to_image(_resize(r.pixels, h, w, Image.Resampling.BILINEAR), out) for r in results]
    masks = [_to_mask(overlay_mask(r, inputs[i]), out) for i, r in enumerate(results)]
    return TinySamRemoteResult(torch.stack(images), torch.stack(masks), [r.request_id for r in results])


def segmentation_map(image: torch.Tensor, *, endpoint: str = "fal", timeout: float = DEFAULT_TIMEOUT_S,
                     target: Optional[Target] = None) -> SegMapRemoteResult:
    """``fal-ai/image-preprocessors/sam`` on each image of the batch."""
    batch = as_image_batch(image)
    b, h, w, _ = batch.shape
    timeout = _check_timeout(timeout)
    target = target or resolve_target(endpoint)
    arguments = [schemas.segmentation_map_arguments(data_uri_for(encode_input_png(batch[i])[0], i)) for i in range(b)]
    results = run_batch(schemas.SEGMENTATION_MAP, arguments, target=target, timeout=timeout,
                        label="SAM Segmentation Map (fal)")
    out = runtime.output_device()
    maps = [_resize(r.pixels, h, w, Image.Resampling.NEAREST) for r in results]  # colours stay exact
    return SegMapRemoteResult(torch.stack([_to_image(m, out) for m in maps]),
                              torch.stack([_to_mask(coverage_mask(m), out) for m in maps]),
                              [r.request_id for r in results])
