"""A self-hosted endpoint that speaks fal's queue protocol for the pack's two jobs.

    python -m samkit serve --model mobile_sam.pt --key-file ~/.config/comfyui-sam-kit/server-keys.txt
    python -m samkit serve --tiny-sam-model FastSAM-s.pt --segmap-model mobile_sam.pt --no-require-key

It serves ``fal-ai/tiny-sam`` and ``fal-ai/image-preprocessors/sam`` with fal's input and output
schemas, running the same library code as the local nodes (``samkit.tinysam.segment_with_prompts``
and ``samkit.segmap.segmentation_map``), so the remote nodes work against it unchanged:

* submit ``POST /{owner}/{app}[/{path}]``, status ``GET /{owner}/{app}/requests/{id}/status``,
  result ``GET /{owner}/{app}/requests/{id}``, cancel ``PUT /{owner}/{app}/requests/{id}/cancel``;
* a real queue: N worker threads, a bounded length (429 when full), 0-based queue positions,
  cancellation (a queued job is dropped; a running one is told to stop at its next check),
  results kept for ``--result-ttl`` seconds, ``X-Fal-Request-Timeout`` honoured;
* ``Authorization: Key <key>`` checked against ``--key-file`` (one key per line);
* 422 ``{"detail": [{loc, msg, type}]}`` for inputs that break the schema (at submit) or that
  the job refuses (at result, e.g. a point outside the image);
* result images at ``/files/<id>.png`` (unguessable names, like fal's CDN URLs); a request for
  a file that carries an ``Authorization`` header is refused, so a client leaking its key to
  the file host fails loudly.

Images come in as data URIs only; this server never fetches URLs (no SSRF from a studio box).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hmac
import io
import json
import logging
import secrets
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
from aiohttp import web
from PIL import Image

from .. import runtime
from . import schemas
from .protocol import is_loopback_host, redact
from .schemas import AppId

log = logging.getLogger("comfyui-sam-kit.fal.server")

DEFAULT_PORT = 8765
MAX_BODY_BYTES = schemas.MAX_DATA_URI_CHARS + (1 << 20)
MAX_IMAGE_PIXELS = 50_000_000


class InputError(ValueError):
    """An input the job cannot use; becomes a 422 at result time. ``field`` names the input."""

    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.field = field


class JobFailed(Exception):
    """How a job ended when it produced no image: the result's HTTP status and body."""

    def __init__(self, status: int, message: str, error_type: str, body: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.error_type, self.body = status, message, error_type, body


# ------------------------------------------------------------------ jobs


@dataclass
class ServerSettings:
    workers: int = 1
    max_queue: int = 16
    result_ttl: float = 600.0
    keys: tuple = ()
    require_key: bool = True
    #: the URL clients reach this server at (behind a reverse proxy); default: from each request
    public_url: Optional[str] = None
    max_image_pixels: int = MAX_IMAGE_PIXELS


@dataclass(eq=False)
class Job:
    id: str
    app: AppId
    endpoint_id: str
    arguments: dict
    start_by: Optional[float] = None
    state: str = "IN_QUEUE"
    logs: list = field(default_factory=list)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    started: Optional[float] = None
    finished: Optional[float] = None
    metrics: dict = field(default_factory=dict)
    #: success: (file_id, width, height, size); failure: (status, body) in ``failure``
    output: Optional[tuple] = None
    failure: Optional[tuple] = None
    error: Optional[str] = None
    error_type: Optional[str] = None

    def log(self, message: str, level: str = "INFO") -> None:
        self.logs.append({"message": str(message), "level": level, "source": "USER",
                          "timestamp": datetime.now(timezone.utc).isoformat()})


class JobContext:
    """What a handler gets besides its arguments: logging, cancellation, the decoded image."""

    def __init__(self, job: Job, settings: ServerSettings):
        self._job = job
        self._settings = settings

    def log(self, message: str, level: str = "INFO") -> None:
        self._job.log(message, level)

    @property
    def cancelled(self) -> bool:
        return self._job.cancel_requested.is_set()

    @property
    def request_id(self) -> str:
        return self._job.id

    def image(self, name: str = "image_url"):
        """The input image as a ``[1,H,W,3]`` IMAGE tensor, decoded by ``images.read_image``'s rules
        (the command line's: 16-bit and float images scaled right, alpha dropped, first frame)."""
        from ..images import ImageDecodeError, decode_image_bytes

        try:
            _mime, data = schemas.decode_data_uri(self._job.arguments[name])
        except ValueError as exc:
            raise InputError(f"Could not load image from {name}: {exc}", name) from None
        try:
            return decode_image_bytes(data, "the image", self._settings.max_image_pixels)
        except ImageDecodeError as exc:
            raise InputError(f"Could not load image from {name}: {exc}", name) from None


Handler = Callable[[dict, JobContext], Any]

# The job running on this thread, for the runtime hooks below (ComfyUI-free cancellation/progress).
_current = threading.local()
_hooks_lock = threading.Lock()


class _JobProgress(runtime.Progress):
    """Library progress bars become job log lines (at most twice a second)."""

    def __init__(self, job: Job, total: int, label: str = ""):
        super().__init__(total, label)
        self._job, self._last = job, 0.0

    def set(self, value: int) -> None:
        super().set(value)
        now = time.monotonic()
        if now - self._last >= 0.5 or self.value >= self.total:
            self._last = now
            self._job.log(f"{self.label or 'working'}: {self.value}/{self.total}")


def install_job_hooks() -> None:
    """Chain runtime hooks so library code running a job sees that job's cancel flag and logs
    its progress there; on any other thread they behave as before. Idempotent."""
    with _hooks_lock:
        previous_check = runtime.hooks.check_interrupt
        previous_progress = runtime.hooks.progress
        if getattr(previous_check, "_samkit_job_hook", False):
            return

        def check_interrupt() -> None:
            job = getattr(_current, "job", None)
            if job is None:
                return previous_check()
            if job.cancel_requested.is_set():
                raise runtime.Interrupted(f"request {job.id} was cancelled")

        def progress(total: int, label: str = ""):
            job = getattr(_current, "job", None)
            return _JobProgress(job, total, label) if job is not None else previous_progress(total, label)

        check_interrupt._samkit_job_hook = True  # type: ignore[attr-defined]
        runtime.install(check_interrupt=check_interrupt, progress=progress)


def _png_of(output: Any) -> tuple[bytes, int, int]:
    """Handler output (IMAGE tensor, uint8 array or PNG bytes) → (PNG, width, height)."""
    if isinstance(output, (bytes, bytearray)):
        with Image.open(io.BytesIO(output)) as img:
            return bytes(output), img.size[0], img.size[1]
    if isinstance(output, np.ndarray):
        pixels = output
    else:
        from ..images import to_uint8_rgb

        pixels = to_uint8_rgb(output)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return buf.getvalue(), pixels.shape[1], pixels.shape[0]


def _detail(message: str, loc: Iterable = (), type_: str = "value_error") -> dict:
    return {"detail": [{"loc": ["body", *loc], "msg": redact(message), "type": type_}]}


# ------------------------------------------------------------------ the server


class FalServer:
    """The queue and HTTP app. ``handlers`` maps endpoint ids to functions ``(arguments, ctx)``."""

    def __init__(self, handlers: dict[str, Handler], settings: ServerSettings | None = None,
                 middlewares: Iterable = ()):
        unknown = set(handlers) - set(schemas.ENDPOINT_IDS)
        if unknown:
            raise ValueError(f"no schema for endpoint(s) {sorted(unknown)}; known: {schemas.ENDPOINT_IDS}")
        if not handlers:
            raise ValueError("the server needs at least one endpoint (a tiny-sam or a seg map model)")
        self.handlers = dict(handlers)
        self.settings = settings or ServerSettings()
        if self.settings.require_key and not self.settings.keys:
            raise ValueError("require_key is set but no keys were given")
        self.jobs: dict[str, Job] = {}
        self.files: dict[str, tuple[bytes, float]] = {}  # file id → (png, expires at)
        self._pending: collections.deque[Job] = collections.deque()
        self._paused = False
        self._cond: Optional[asyncio.Condition] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._pool: Optional[ThreadPoolExecutor] = None
        self._tasks: list[asyncio.Task] = []
        self._middlewares = list(middlewares)

    # -------------------------------------------------------------- app

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[*self._middlewares, self._errors_and_auth])
        r = app.router
        r.add_get("/health", self._health)
        r.add_get("/files/{name}", self._file)
        r.add_get("/{owner}/{alias}/requests/{request_id}/status", self._status)
        r.add_put("/{owner}/{alias}/requests/{request_id}/cancel", self._cancel)
        r.add_get("/{owner}/{alias}/requests/{request_id}", self._result)
        r.add_get("/{owner}/{alias}/requests/{request_id}/", self._result)
        r.add_post("/{tail:.+}", self._submit)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app) -> None:
        install_job_hooks()
        self._loop = asyncio.get_running_loop()
        self._cond = asyncio.Condition()
        self._pool = ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="samkit-serve")
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.settings.workers)]
        self._tasks.append(asyncio.create_task(self._janitor()))

    async def _on_cleanup(self, _app) -> None:
        for job in self.jobs.values():
            job.cancel_requested.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    @web.middleware
    async def _errors_and_auth(self, request: web.Request, handler):
        if request.path != "/health" and not request.path.startswith("/files/") and not self._authorised(request):
            return web.json_response({"detail": "Missing or invalid key: send 'Authorization: Key <key>' with a key "
                                                "this server accepts."}, status=401)
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return web.json_response(_detail(f"Request body is larger than {MAX_BODY_BYTES} bytes", (), "too_large"),
                                     status=413)
        except web.HTTPException as exc:
            if exc.status >= 400 and exc.content_type != "application/json":
                return web.json_response({"detail": exc.reason}, status=exc.status)
            raise

    def _authorised(self, request: web.Request) -> bool:
        if not self.settings.require_key:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "key" or not given:
            return False
        given_b = given.strip().encode()
        ok = False
        for key in self.settings.keys:  # compare against every key: no timing hint about which matched
            ok |= hmac.compare_digest(given_b, key.encode())
        return ok

    def _base(self, request: web.Request) -> str:
        return (self.settings.public_url or f"{request.scheme}://{request.host}").rstrip("/")

    def _urls(self, request: web.Request, job: Job) -> dict:
        base = f"{self._base(request)}/{job.app.queue_app}/requests/{job.id}"
        return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}

    def _job(self, request: web.Request) -> Optional[Job]:
        job = self.jobs.get(request.match_info["request_id"])
        owner, alias = request.match_info["owner"], request.match_info["alias"]
        if job is None or job.app.queue_app != f"{owner}/{alias}":
            return None
        return job

    @staticmethod
    def _json(body: Any, status: int = 200, job: Optional[Job] = None, headers: Optional[dict] = None) -> web.Response:
        h = dict(headers or {})
        if job is not None:
            h["x-fal-request-id"] = job.id
        return web.json_response(body, status=status, headers=h)

    # -------------------------------------------------------------- routes

    async def _health(self, request: web.Request) -> web.Response:
        return self._json({"status": "ok", "endpoints": sorted(self.handlers), "workers": self.settings.workers,
                           "queued": len(self._pending), "max_queue": self.settings.max_queue})

    async def _submit(self, request: web.Request) -> web.Response:
        endpoint_id = request.match_info["tail"].strip("/")
        if endpoint_id not in self.handlers:
            return self._json({"detail": f"Application {endpoint_id!r} not found; this server runs "
                                         f"{', '.join(sorted(self.handlers))}"}, 404)
        raw = await request.read()
        try:
            arguments = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return self._json({"detail": [{"loc": ["body"], "msg": "Invalid JSON", "type": "json_invalid"}]}, 422)
        errors = schemas.VALIDATORS[endpoint_id](arguments)
        if not errors and not str(arguments["image_url"]).startswith("data:"):
            errors = [{"loc": ["body", "image_url"], "type": "value_error",
                       "msg": "This server takes images as data:image/...;base64 URIs only; it does not fetch URLs"}]
        if errors:
            for e in errors:
                e["msg"] = redact(e["msg"])
            return self._json({"detail": errors}, 422)
        if len(self._pending) >= self.settings.max_queue:
            return self._json({"detail": f"The queue is full ({self.settings.max_queue} requests waiting); try again "
                                         "later"}, 429, headers={"Retry-After": "1"})
        start_by = None
        timeout_header = request.headers.get("X-Fal-Request-Timeout")
        if timeout_header:
            try:
                seconds = float(timeout_header)
            except ValueError:
                return self._json({"detail": "X-Fal-Request-Timeout must be a number of seconds"}, 400)
            if seconds > 0:
                start_by = time.monotonic() + seconds
        job = Job(str(uuid.uuid4()), AppId.parse(endpoint_id), endpoint_id, arguments, start_by=start_by)
        self.jobs[job.id] = job
        async with self._cond:
            self._pending.append(job)
            position = len(self._pending) - 1
            self._cond.notify()
        log.info("queued %s request %s (position %d)", endpoint_id, job.id, position)
        return self._json({"request_id": job.id, "status": "IN_QUEUE", "queue_position": position,
                           **self._urls(request, job)}, 200, job)

    def _status_body(self, request: web.Request, job: Job, with_logs: bool) -> dict:
        body: dict = {"status": job.state, "request_id": job.id, **self._urls(request, job)}
        if job.state == "IN_QUEUE":
            try:
                body["queue_position"] = self._pending.index(job)
            except ValueError:  # just taken by a worker
                body["queue_position"] = 0
        else:
            body["logs"] = list(job.logs) if with_logs else None
        if job.state == "COMPLETED":
            body.update(metrics=job.metrics, error=job.error, error_type=job.error_type)
        return body

    async def _status(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return self._json({"detail": "Request not found"}, 404)
        with_logs = request.query.get("logs", "0").lower() in ("1", "true", "yes")
        return self._json(self._status_body(request, job, with_logs), 200 if job.state == "COMPLETED" else 202, job)

    async def _result(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return self._json({"detail": "Request not found"}, 404)
        if job.state != "COMPLETED":
            return self._json(self._status_body(request, job, False), 202, job)
        if job.failure is not None:
            status, body = job.failure
            extra = {"X-Fal-Request-Timeout-Type": "user"} if job.error_type == "request_timeout" else None
            return self._json(body, status, job, extra)
        file_id, width, height, size = job.output
        return self._json(schemas.image_output(f"{self._base(request)}/files/{file_id}.png", width, height, size,
                                               f"{file_id}.png"), 200, job)

    async def _cancel(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return self._json({"status": "NOT_FOUND"}, 404)
        if job.state == "COMPLETED":
            return self._json({"status": "ALREADY_COMPLETED"}, 400, job)
        job.cancel_requested.set()
        async with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                self._fail(job, 400, "Request was cancelled", "request_cancelled")
        log.info("cancel requested for %s", job.id)
        return self._json({"status": "CANCELLATION_REQUESTED"}, 202, job)

    async def _file(self, request: web.Request) -> web.Response:
        if "Authorization" in request.headers:
            log.warning("refused a file request that carried an Authorization header")
            return self._json({"detail": "Do not send credentials to the file host: result URLs are public and are "
                                         "fetched without a key"}, 400)
        name = request.match_info["name"]
        entry = self.files.get(name[:-4]) if name.endswith(".png") else None
        if entry is None or entry[1] < time.monotonic():
            return self._json({"detail": "File not found (results expire)"}, 404)
        return web.Response(body=entry[0], content_type="image/png", headers={"Cache-Control": "no-store"})

    # -------------------------------------------------------------- the queue

    def pause(self) -> None:
        """Stop starting jobs (queued ones wait). Thread-safe."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._notify_all(), self._loop)

    async def _notify_all(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            async with self._cond:
                await self._cond.wait_for(lambda: self._pending and not self._paused)
                job = self._pending.popleft()
                job.state = "IN_PROGRESS"
                job.started = time.monotonic()
            if job.start_by is not None and job.started > job.start_by:
                self._fail(job, 504, "The request did not start before its X-Fal-Request-Timeout", "request_timeout")
                continue
            # Job records and files are written here, on the event loop's thread, never by workers.
            try:
                png, width, height = await loop.run_in_executor(self._pool, self._run, job)
            except JobFailed as failed:
                self._fail(job, failed.status, failed.message, failed.error_type, failed.body)
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # _run handles its own errors; this guards the worker loop itself
                log.exception("worker failed on %s", job.id)
                self._fail(job, 500, "Internal server error", "internal_error")
                continue
            file_id = secrets.token_urlsafe(18)
            self.files[file_id] = (png, time.monotonic() + self.settings.result_ttl)
            job.output = (file_id, width, height, len(png))
            job.log(f"done: {width}x{height} image")
            self._finish(job)

    def _fail(self, job: Job, status: int, message: str, error_type: str, body: Optional[dict] = None) -> None:
        job.failure = (status, body or {"detail": message, "error_type": error_type})
        job.error, job.error_type = message, error_type
        self._finish(job)

    def _finish(self, job: Job) -> None:
        job.finished = time.monotonic()
        if job.started is not None:
            job.metrics = {"inference_time": round(job.finished - job.started, 4)}
        job.state = "COMPLETED"  # last: readers see a complete record

    def _run(self, job: Job) -> tuple:
        """One job on a worker thread: ``(png, width, height)``, or :class:`JobFailed`."""
        _current.job = job
        ctx = JobContext(job, self.settings)
        try:
            if job.cancel_requested.is_set():
                raise runtime.Interrupted("cancelled")
            job.log(f"started {job.endpoint_id}")
            output = self.handlers[job.endpoint_id](job.arguments, ctx)
            if job.cancel_requested.is_set():
                raise runtime.Interrupted("cancelled")
            return _png_of(output)
        except runtime.Interrupted:
            raise JobFailed(400, "Request was cancelled", "request_cancelled") from None
        except ValueError as exc:  # InputError, PromptError and the library's other input checks
            field_name = getattr(exc, "field", None) or _field_named_in(str(exc), job.arguments)
            message = redact(exc)
            job.log(message, "ERROR")
            raise JobFailed(422, message, "validation_error",
                            _detail(message, [field_name] if field_name else [])) from None
        except Exception as exc:
            log.exception("request %s failed", job.id)
            job.log(f"internal error: {type(exc).__name__}", "ERROR")
            raise JobFailed(500, f"Internal error while running the model ({type(exc).__name__})",
                            "internal_error") from None
        finally:
            _current.job = None

    async def _janitor(self) -> None:
        period = min(max(self.settings.result_ttl / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for job_id, job in list(self.jobs.items()):
                if job.state == "COMPLETED" and job.finished is not None and job.finished + self.settings.result_ttl < now:
                    del self.jobs[job_id]
                    if job.output is not None:
                        self.files.pop(job.output[0], None)
            for file_id, (_png, expires) in list(self.files.items()):
                if expires < now:
                    self.files.pop(file_id, None)


def _field_named_in(message: str, arguments: dict) -> Optional[str]:
    """The library's prompt errors start with the input's name ("point_prompt: ...")."""
    head = message.split(":", 1)[0].strip()
    return head if head in arguments or head in schemas.TINY_SAM_DEFAULTS else None


# ------------------------------------------------------------------ handlers for the local code

_model_locks: "dict[int, threading.Lock]" = {}
_model_locks_guard = threading.Lock()


def model_lock(model) -> threading.Lock:
    """One lock per loaded model: ultralytics' FastSAM keeps per-call state in its predictor, so
    a model never runs two jobs at once. Workers still overlap decoding, encoding and jobs on
    other models."""
    with _model_locks_guard:
        return _model_locks.setdefault(id(model.module), threading.Lock())


def tiny_sam_handler(model) -> Handler:
    """``fal-ai/tiny-sam`` → ``samkit.tinysam.segment_with_prompts``; answers its combined image."""
    from ..tinysam import TinySamRequest, segment_with_prompts

    lock = model_lock(model)

    def handle(arguments: dict, ctx: JobContext):
        a = schemas.with_tiny_sam_defaults(arguments)
        image = ctx.image()
        request = TinySamRequest(size=a["size"], confidence=a["confidence"], box_prompt=a["box_prompt"],
                                 point_prompt=a["point_prompt"], point_label=a["point_label"])
        ctx.log(f"Tiny SAM with {model.name} on a {image.shape[2]}x{image.shape[1]} image")
        with lock:
            result = segment_with_prompts(model, image, request)
        ctx.log(f"{result.counts[0]} object(s)")
        return result.image[0]

    return handle


def segmentation_map_handler(model, settings=None, seed: int = 0) -> Handler:
    """``fal-ai/image-preprocessors/sam`` → ``samkit.segmap.segmentation_map``; answers the colour map."""
    from ..segmap import segmentation_map

    lock = model_lock(model)

    def handle(arguments: dict, ctx: JobContext):
        image = ctx.image()
        ctx.log(f"segmentation map with {model.name} on a {image.shape[2]}x{image.shape[1]} image")
        with lock:
            result = segmentation_map(model, image, settings, seed)
        ctx.log(f"{result.counts[0]} segment(s)")
        return result.seg_map[0]

    return handle


# ------------------------------------------------------------------ running it


class BackgroundServer:
    """Runs a :class:`FalServer` on its own thread and event loop (for embedding and tests)."""

    def __init__(self, server: FalServer, host: str = "127.0.0.1", port: int = 0):
        self.server, self.host, self.port = server, host, port
        self.base_url: Optional[str] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner: Optional[web.AppRunner] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None

    def start(self, timeout: float = 10.0) -> str:
        self._thread = threading.Thread(target=self._main, name="samkit-fal-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the server did not start in time")
        if self._error is not None:
            raise self._error
        return self.base_url

    def _main(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = web.AppRunner(self.server.make_app(), access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            self._loop.run_until_complete(site.start())
            host, port = self._runner.addresses[0][:2]
            self.base_url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        except BaseException as exc:  # report start-up failures to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


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
    p.add_argument("--public-url", help="URL clients use to reach this server (behind a reverse proxy)")
    p.add_argument("--points-per-side", type=int, default=32, help="seg map: point grid per side")
    p.add_argument("--pred-iou-thresh", type=float, default=0.88, help="seg map: predicted quality threshold")
    p.add_argument("--stability-score-thresh", type=float, default=0.95, help="seg map: stability threshold")
    p.add_argument("--min-mask-region-area", type=int, default=0, help="seg map: remove regions below this many pixels")
    p.add_argument("--log-level", default="INFO")
    return p


async def serve(server: FalServer, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM. Logs the address actually bound (``--port 0`` picks a free one)."""
    import signal

    runner = web.AppRunner(server.make_app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        log.info("serving %s at http://%s:%d (%d worker(s)); stop with Ctrl+C", ", ".join(sorted(server.handlers)),
                 shown, bound_port, server.settings.workers)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # Windows: Ctrl+C arrives as KeyboardInterrupt
                pass
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()


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
        if tiny_name:
            handlers[schemas.TINY_SAM] = tiny_sam_handler(load_model(tiny_name, args.device, args.precision))
        if segmap_name:
            settings = AutoMaskSettings(points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
                                        stability_score_thresh=args.stability_score_thresh,
                                        min_mask_region_area=args.min_mask_region_area).validate()
            # the loader caches by file, so one --model is loaded once for both endpoints
            model = load_model(segmap_name, args.device, args.precision)
            handlers[schemas.SEGMENTATION_MAP] = segmentation_map_handler(model, settings)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = FalServer(handlers, ServerSettings(workers=args.workers, max_queue=args.max_queue,
                                                result_ttl=args.result_ttl, keys=keys, require_key=args.require_key,
                                                public_url=args.public_url))
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
