"""Live mask preview for the Tiny SAM editor: the node's masks for the prompts on screen, at once.

The editor (``web/js/mask_preview.js``) posts what the Tiny SAM node would run with: the Load
SAM Model node's choice (``model_name``, ``device``, ``precision``), a reference to the upstream
image of the kind ComfyUI's ``/view`` serves (``filename``, ``subfolder``, ``type``), and the
node's widgets as they hold them (``box_prompt``, ``point_prompt``, ``point_label`` strings, and
``size``, ``confidence``, ``iou``). :meth:`Previewer.preview` answers with the objects that
``tiny_sam_job.find_objects`` (the node's own per-image step) finds for them, so a queued run
gives exactly the masks the preview showed:

* the model comes from the loader (``loader.load_model``, the same cached object the node gets,
  on the device and in the precision the loader chose: no second copy of the weights);
* SAM-family image embeddings come from the node's cache (``embedding_cache.embeddings``): the
  first preview of an image may run the encoder, later ones (and the node's run) never do;
* the image is decoded by ``images.read_image``, which gives the pixels ComfyUI's LoadImage gives
  for 8-bit files, so the node's run finds the preview's embedding in the cache.

What is refused (a :class:`PreviewError` with a message the editor shows; nothing is run):

* a model name not in Load SAM Model's list (``model_folders.list_model_choices``), or one in it
  that is not downloaded yet (a preview never starts a download);
* an image reference outside ``/view``'s rules: ``type`` input/output/temp, a bare ``filename``
  (no folder part, no ``..``), a ``subfolder`` that stays inside that folder (the rules of
  ComfyUI 0.3.64's ``server.py`` ``/view``, plus: no absolute or ``..`` subfolder at all);
* images over :attr:`Previewer.max_pixels`, more than :attr:`Previewer.max_points` points or
  :attr:`Previewer.max_boxes` boxes, prompt texts over ``MAX_TEXT`` characters;
* SAM with background points only (the node runs SAM's everything mode for that: seconds, not a
  preview's work): answered with no objects and a note.

Work is bounded per request: one preview runs at a time (a lock), a request waits at most
``wait_s`` for it, and a newer request for the same editor (``node`` key) supersedes an older
one still waiting (answered ``{"superseded": true}``). ``busy()`` (the host: ComfyUI is running a
workflow) refuses previews while the model may be in use by the node.

Answer: ``{"width", "height", "objects": [{"box": [x0, y0, x1, y1], "png": base64, "colour":
[r, g, b], "score", "area"}], "paint_order", "alpha", "encoded", "ms"}``. Each object's ``png``
is its mask cropped to its (inclusive) box: a 1-bit palette PNG, index 1 (the mask) in the object's
colour, index 0 transparent; ``colour`` is the node's combined-image colour
for it (``painting.palette``, seed 0); ``paint_order`` lists objects as the node paints them
(largest first, so smaller ones lie on top); ``alpha`` is the node's tint strength.
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from . import model_folders, precision
from .embedding_cache import embeddings
from .images import read_image
from .overlay import OVERLAY_ALPHA
from .painting import order_by_area, palette
from .tiny_sam_job import TinySamRequest, find_objects

IMAGE_TYPES = ("input", "output", "temp")
MAX_PIXELS = 4096 * 4096
MAX_POINTS = 64
MAX_BOXES = 32
MAX_TEXT = 20_000  # characters per prompt widget: 64 points are a few hundred
WAIT_S = 10.0


class PreviewError(Exception):
    """A refused or failed preview: ``message`` for the editor, ``status`` for HTTP; ``retry``: the same
    request may succeed later unchanged (the host was busy), so the editor asks again."""

    def __init__(self, message: str, status: int = 400, retry: bool = False):
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry = retry


def _text(value, name: str, limit: int = 4096) -> str:
    if not isinstance(value, str):
        raise PreviewError(f"{name} must be text, got {type(value).__name__}")
    if len(value) > limit or "\x00" in value:
        raise PreviewError(f"{name} is too long or holds a NUL character")
    return value


def resolve_image(ref, folders: Mapping[str, str]) -> Path:
    """The file an image reference names, by ``/view``'s rules (module docstring); PreviewError otherwise.

    ``folders`` maps ``input``/``output``/``temp`` to their directories (the host's).
    """
    if not isinstance(ref, dict):
        raise PreviewError("image must be {filename, subfolder, type}, as ComfyUI's /view takes it")
    kind = _text(ref.get("type", "input"), "image type")
    if kind not in IMAGE_TYPES or kind not in folders:
        raise PreviewError(f"image type {kind!r} is not one of {', '.join(IMAGE_TYPES)}")
    filename = _text(ref.get("filename", ""), "image filename").strip()
    subfolder = _text(ref.get("subfolder", "") or "", "image subfolder")
    if not filename or filename in (".", "..") or "/" in filename or "\\" in filename or ".." in filename:
        raise PreviewError(f"image filename {filename!r} must be a bare file name (no folder, no '..')")
    parts = subfolder.replace("\\", "/").split("/")
    if subfolder.startswith(("/", "\\")) or Path(subfolder).drive or ".." in parts:
        raise PreviewError(f"image subfolder {subfolder!r} must stay inside the {kind} folder")
    base = os.path.abspath(folders[kind])
    folder = os.path.abspath(os.path.join(base, subfolder))
    if os.path.commonpath((folder, base)) != base:  # /view's own check
        raise PreviewError(f"image subfolder {subfolder!r} must stay inside the {kind} folder")
    path = Path(folder) / filename
    if not path.is_file():
        raise PreviewError(f"image {filename!r} is not in the {kind} folder{' ' + subfolder if subfolder else ''}", 404)
    return path


def _mask_png(pixels: np.ndarray, colour) -> str:
    """A bool mask as a base64 1-bit palette PNG: index 1 = ``colour``, index 0 transparent, so a browser
    draws it as it is (no per-pixel work in JavaScript)."""
    from PIL import Image

    height, width = pixels.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    image.putpalette([0, 0, 0, *colour])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0, compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Previewer:
    """Previews, one at a time (see the module docstring).

    ``folders()`` gives the ``/view`` folders by type; ``busy()`` a reason previews must wait (the
    host is running a workflow), or None; ``load(name, device, precision)`` the loader's model.
    """

    def __init__(self, folders: Callable[[], Mapping[str, str]], busy: Callable[[], Optional[str]] = lambda: None,
                 load: Optional[Callable] = None, max_pixels: int = MAX_PIXELS, max_points: int = MAX_POINTS,
                 max_boxes: int = MAX_BOXES, wait_s: float = WAIT_S):
        if load is None:
            from .loader import load_model

            load = lambda name, device, prec: load_model(name, device=device, precision=prec, folders_only=True)  # noqa: E731
        self.folders, self.busy, self.load = folders, busy, load
        self.max_pixels, self.max_points, self.max_boxes, self.wait_s = max_pixels, max_points, max_boxes, wait_s
        self._work = threading.Lock()
        self._latest: "OrderedDict[str, int]" = OrderedDict()  # editor key -> newest request number
        self._count = 0
        self._guard = threading.Lock()
        self._image_key, self._image = None, None  # the last image decoded (clicks on one image reuse it)

    # ------------------------------------------------------------ requests in order
    def _take_number(self, key: str) -> int:
        with self._guard:
            self._count += 1
            self._latest[key] = self._count
            self._latest.move_to_end(key)
            while len(self._latest) > 256:
                self._latest.popitem(last=False)
            return self._count

    def _superseded(self, key: str, number: int) -> bool:
        with self._guard:
            return self._latest.get(key, number) != number

    def preview(self, body) -> dict:
        """The objects the node would find for ``body`` (module docstring); raises PreviewError."""
        if not isinstance(body, dict):
            raise PreviewError("the preview request must be a JSON object")
        key = _text(body.get("node", ""), "node", 200)
        number = self._take_number(key)
        if not self._work.acquire(timeout=self.wait_s):
            raise PreviewError(f"the preview is busy (another preview ran over {self.wait_s:g} s)", 503, retry=True)
        try:
            if self._superseded(key, number):
                return {"superseded": True}
            reason = self.busy()
            if reason:
                raise PreviewError(f"preview paused: {reason}", 409, retry=True)
            return self._run(body)
        finally:
            self._work.release()

    # ------------------------------------------------------------ the work
    def _model(self, choice):
        if not isinstance(choice, dict):
            raise PreviewError("model must be {model_name, device, precision} from Load SAM Model")
        name = _text(choice.get("model_name", ""), "model_name", 1000)
        if name not in model_folders.list_model_choices():
            raise PreviewError(f"model {name!r} is not in Load SAM Model's list (files in the sams model folders, "
                               "and known models); pick one there")
        if name not in model_folders.installed_models():
            raise PreviewError(f"model {name!r} is not downloaded yet: queue the workflow once (Load SAM Model "
                               "downloads it), then the preview works", 409)
        device = _text(choice.get("device", "auto"), "device", 20)
        prec = _text(choice.get("precision", "auto"), "precision", 20)
        try:
            return self.load(name, device, prec)
        except (ValueError, OSError, RuntimeError) as exc:  # loader errors name the file and what to do
            raise PreviewError(f"model {name!r} cannot load: {exc}", 422) from None

    def _pixels(self, path: Path) -> np.ndarray:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key != self._image_key:
            self._image_key, self._image = None, None
            try:
                image = read_image(path, name=path.name, max_pixels=self.max_pixels)
            except ValueError as exc:
                raise PreviewError(str(exc)) from None
            self._image_key, self._image = key, image
        return self._image

    def _request(self, body: dict) -> TinySamRequest:
        texts = {k: _text(body.get(k, d), k, MAX_TEXT) for k, d in
                 (("box_prompt", "[[0,0,0,0]]"), ("point_prompt", "[[0,0]]"), ("point_label", "[0]"))}
        size = body.get("size", TinySamRequest.size)
        if isinstance(size, float) and size.is_integer():
            size = int(size)  # a JSON number written as 1024.0 is still the whole number the widget holds
        try:
            return TinySamRequest(size=size,
                                  confidence=body.get("confidence", TinySamRequest.confidence),
                                  iou=body.get("iou", TinySamRequest.iou), **texts).validate()
        except ValueError as exc:
            raise PreviewError(str(exc)) from None

    def _run(self, body: dict) -> dict:
        started = time.perf_counter()
        request = self._request(body)
        image = self._pixels(resolve_image(body.get("image"), self.folders()))
        h, w = image.shape[:2]
        try:
            prompts = request.prompts_for(1, w, h)[0]
        except ValueError as exc:
            raise PreviewError(str(exc)) from None
        if len(prompts.points) > self.max_points or len(prompts.boxes) > self.max_boxes:
            raise PreviewError(f"the preview takes at most {self.max_points} points and {self.max_boxes} boxes "
                               f"({len(prompts.points)} and {len(prompts.boxes)} given); queue the workflow for more")
        answer = {"width": w, "height": h, "objects": [], "paint_order": [], "alpha": OVERLAY_ALPHA, "encoded": False}
        if prompts.empty:
            return answer
        loading = time.perf_counter()
        model = self._model(body.get("model"))
        if model.samples_prompts and not (prompts.boxes or prompts.has_positive):
            answer["note"] = "no preview for background points alone (the node segments everything but them)"
            return answer
        encoder_runs = embeddings.encoder_calls
        decoded = time.perf_counter()
        try:
            with precision.for_model(model):
                masks, scores = find_objects(model, image, prompts, request)
        except ValueError as exc:
            raise PreviewError(str(exc)) from None
        ran = time.perf_counter()
        colours = palette(len(masks)).tolist()
        for i, (area, score) in enumerate(zip(masks.areas.tolist(), scores.tolist())):
            box, pixels = masks.box_pixels(i)
            answer["objects"].append({"box": list(box), "png": _mask_png(pixels, colours[i]), "colour": colours[i],
                                      "score": round(float(score), 4), "area": int(area)})
        answer["paint_order"] = order_by_area(masks.areas).tolist()
        answer["encoded"] = embeddings.encoder_calls != encoder_runs
        ms = lambda a, b: round((b - a) * 1000, 1)  # noqa: E731
        answer["ms"] = {"load": ms(loading, decoded), "model": ms(decoded, ran), "total": ms(started, time.perf_counter())}
        return answer
