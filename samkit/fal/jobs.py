"""A served job and what its handler sees: the job record, :class:`JobContext` (logging,
cancellation, the decoded input image), the runtime hooks that route library progress and
cancellation to the job running on the current thread, and :func:`run_job`, which runs one
handler and turns its outcome into a PNG or a :class:`JobFailed` (the result's status and body).

Nothing here knows about HTTP or the queue, so every way of serving the handlers can share it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Optional

import numpy as np

from .. import runtime
from ..images import ImageDecodeError, decode_image_bytes, image_size, png_bytes, to_uint8_rgb
from . import schemas
from .errors import redact
from .schemas import AppId
from .url_fetch import OutboundPolicy, OutboundRefused, describe_host, fetch_bytes

log = logging.getLogger("comfyui-sam-kit.fal.server")

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


@dataclass
class ServerSettings:
    """How the self-hosted server serves: queue, keys, result lifetime, input size limit, and its
    optional features (``python -m samkit serve --help``; the README's self-hosted section)."""

    workers: int = 1
    max_queue: int = 16
    result_ttl: float = 600.0
    keys: tuple = ()
    require_key: bool = True
    #: the URL clients reach this server at (behind a reverse proxy); default: from each request
    public_url: Optional[str] = None
    #: peers (ip_network objects) whose Forwarded / X-Forwarded-* headers are believed (.web_edges)
    trusted_proxies: tuple = ()
    max_image_pixels: int = MAX_IMAGE_PIXELS
    #: https image_url fetching (.url_fetch); off while its host list is empty
    fetch: OutboundPolicy = field(default_factory=OutboundPolicy)
    #: ?fal_webhook= delivery (.webhooks); refused with 422 while its host list is empty
    webhooks: OutboundPolicy = field(default_factory=OutboundPolicy)
    webhook_retries: int = 5
    #: origins browser apps may call from (CORS); "*" for any
    cors_origins: tuple = ()


@dataclass(eq=False)
class Job:
    id: str
    app: AppId
    endpoint_id: str
    arguments: dict
    start_by: Optional[float] = None
    #: where to POST fal's webhook payload when the job ends (checked against the policy at submit)
    webhook: Optional[str] = None
    #: the base URL the submitter reached the server at (the webhook's result URLs use it)
    public_base: str = ""
    submitted_position: int = 0
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
        (the command line's: 16-bit and float images scaled right, alpha dropped, first frame).

        A data URI is judged by its bytes, whatever MIME type it is labelled with (fal_client's
        ``encode_file`` writes ``application/octet-stream`` for an unknown extension); an
        ``https://`` URL is fetched under ``settings.fetch`` (:mod:`.url_fetch`)."""
        value = self._job.arguments[name]
        try:
            if str(value).startswith("https://"):
                self.log(f"fetching {name} from {describe_host(value)}")
                data = fetch_bytes(value, self._settings.fetch, name)
            else:
                _mime, data = schemas.decode_data_uri(value)
        except OutboundRefused as exc:
            raise InputError(f"Could not load image from {exc}", name) from None
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
        self._job, self._last, self._logged = job, 0.0, None

    def set(self, value: int) -> None:
        super().set(value)
        now = time.monotonic()
        # a value already logged is not logged again: clients accumulate log lines, and callers
        # set the same value twice (a crop's last batch, then the crop's end)
        if self.value != self._logged and (now - self._last >= 0.5 or self.value >= self.total):
            self._last, self._logged = now, self.value
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
        return (bytes(output), *image_size(output))
    pixels = output if isinstance(output, np.ndarray) else to_uint8_rgb(output)
    return png_bytes(pixels), pixels.shape[1], pixels.shape[0]


def error_detail(message: str, loc: Iterable = (), type_: str = "value_error") -> dict:
    """A 422 body as fal (FastAPI) writes it: ``{"detail": [{"loc": ["body", ...], "msg", "type"}]}``."""
    return {"detail": [{"loc": ["body", *loc], "msg": redact(message), "type": type_}]}


def run_job(job: Job, handler: Handler, settings: ServerSettings) -> tuple:
    """Run ``handler`` on ``job`` on this (worker) thread: ``(png, width, height)``, or :class:`JobFailed`.

    Cancellation → 400 ``request_cancelled``; a ``ValueError`` (an input the job refuses) → 422
    ``validation_error`` naming the input; anything else → 500 ``internal_error`` (logged here,
    its text never sent).
    """
    _current.job = job
    ctx = JobContext(job, settings)
    try:
        if job.cancel_requested.is_set():
            raise runtime.Interrupted("cancelled")
        job.log(f"started {job.endpoint_id}")
        output = handler(job.arguments, ctx)
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
                        error_detail(message, [field_name] if field_name else [])) from None
    except Exception as exc:
        log.exception("request %s failed", job.id)
        job.log(f"internal error: {type(exc).__name__}", "ERROR")
        raise JobFailed(500, f"Internal error while running the model ({type(exc).__name__})",
                        "internal_error") from None
    finally:
        _current.job = None


def _field_named_in(message: str, arguments: dict) -> Optional[str]:
    """The library's prompt errors start with the input's name ("point_prompt: ...")."""
    head = message.split(":", 1)[0].strip()
    return head if head in arguments or head in schemas.TINY_SAM_DEFAULTS else None

