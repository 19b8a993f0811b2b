"""The pack's fal-compatible server on 127.0.0.1 for tests, with fault injection.

* ``small_model()``: a tiny random SAM (``LoadedModel``) whose masks are not empty, built once.
* ``serve(...)``: a context manager running the real :class:`FalServer` (real handlers, real
  queue, real HTTP) on a free loopback port, with a :class:`Faults` middleware in front of it.
* :class:`Faults`: records every request the server received (stage, path, Authorization
  header, arrival time) and replaces or alters chosen answers: an error status with a body,
  a delay after the real handler ran, submit URLs pointing at another origin; a rule may apply
  only while a condition holds (``when``), e.g. :func:`limit_concurrency`'s 429s.
* ``recorder()``: a second loopback server that only records what reaches it (the "foreign
  host" a malicious answer could point at).
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import urlsplit, urlunsplit

import torch
from aiohttp import web

from comfyui_sam_kit.samkit.automask import AutoMaskSettings
from comfyui_sam_kit.samkit.fal import schemas
from comfyui_sam_kit.samkit.fal.handlers import segmentation_map_handler, tiny_sam_handler
from comfyui_sam_kit.samkit.fal.hosting import BackgroundServer
from comfyui_sam_kit.samkit.fal.jobs import ServerSettings
from comfyui_sam_kit.samkit.fal.server import FalServer
from comfyui_sam_kit.samkit.loaded_model import LoadedModel
from testsupport.checkpoints import build_small_sam

SERVER_KEY = "test-id:test-secret-0123456789"
#: seg map settings that let a random model's masks through, with a small grid (fast on CPU)
OPEN_SEGMAP = AutoMaskSettings(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


@functools.lru_cache(maxsize=1)
def small_model() -> LoadedModel:
    """A small random SAM whose prompted and automatic masks are not empty (read-only; shared)."""
    sam = build_small_sam(seed=4)
    with torch.no_grad():  # spread the untrained decoder's logits and lift its quality scores
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(40.0)
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(1.0)
    return LoadedModel("small", "", "sam", "vit_custom", sam, sam, torch.device("cpu"), torch.float32)


def real_handlers(model: Optional[LoadedModel] = None) -> dict:
    model = model or small_model()
    return {schemas.TINY_SAM: tiny_sam_handler(model),
            schemas.SEGMENTATION_MAP: segmentation_map_handler(model, OPEN_SEGMAP)}


def stage_of(method: str, path: str) -> str:
    if path.startswith("/files/"):
        return "file"
    if method == "POST":
        return "submit"
    if method == "PUT" and path.endswith("/cancel"):
        return "cancel"
    if method == "GET" and path.endswith("/status"):
        return "status"
    if method == "GET" and "/requests/" in path:
        return "result"
    return "other"


@dataclass
class Seen:
    method: str
    path: str
    stage: str
    authorization: Optional[str]
    query: str = ""
    t: float = field(default_factory=time.monotonic)  # when it arrived (monotonic clock)


@dataclass
class Fault:
    stage: str
    times: int = 1
    #: answer with this status instead of calling the server
    status: Optional[int] = None
    #: JSON body, or a function of the last submitted arguments returning one; a str is sent as text/html
    body: Any = None
    #: response headers, or a function returning them (for a Retry-After date made when it is sent)
    headers: Any = field(default_factory=dict)
    #: let the server answer, then wait this long before passing the answer on
    delay_after: float = 0.0
    #: submit only: rewrite status_url/response_url/cancel_url to this origin (scheme://host:port)
    rewrite_urls_to: Optional[str] = None
    #: hold the request until this is true (at most 10 s), e.g. until another request was served
    wait_for: Optional[Callable[[], bool]] = None
    #: apply the rule only while this is true (checked as the request arrives; not used up otherwise)
    when: Optional[Callable[[], bool]] = None


class Faults:
    """An aiohttp middleware that records requests and injects the configured faults, in order."""

    def __init__(self):
        self.rules: list[Fault] = []
        self.seen: list[Seen] = []
        self.last_arguments: Optional[dict] = None
        self._lock = threading.Lock()

    def add(self, stage: str, **kw) -> "Faults":
        self.rules.append(Fault(stage, **kw))
        return self

    def count(self, stage: str) -> int:
        return sum(1 for s in self.seen if s.stage == stage)

    def times(self, stage: str) -> list[float]:
        return [s.t for s in self.seen if s.stage == stage]

    def authorizations(self) -> set:
        return {s.authorization for s in self.seen}

    def _take(self, stage: str) -> Optional[Fault]:
        with self._lock:
            for rule in self.rules:
                if rule.stage == stage and rule.times > 0 and (rule.when is None or rule.when()):
                    rule.times -= 1
                    return rule
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        stage = stage_of(request.method, request.path)
        self.seen.append(Seen(request.method, request.path, stage, request.headers.get("Authorization"),
                              request.query_string))
        if stage == "submit":
            try:
                self.last_arguments = json.loads(await request.read())  # cached: the handler reads it again
            except (ValueError, RecursionError):
                self.last_arguments = None
        rule = self._take(stage)
        if rule is None:
            return await handler(request)
        if rule.wait_for is not None:
            end = time.monotonic() + 10
            while not rule.wait_for() and time.monotonic() < end:
                await asyncio.sleep(0.01)
        if rule.status is not None:
            body = rule.body(self.last_arguments) if callable(rule.body) else rule.body
            headers = rule.headers() if callable(rule.headers) else rule.headers
            if isinstance(body, str):
                return web.Response(text=body, status=rule.status, content_type="text/html", headers=headers)
            return web.json_response(body, status=rule.status, headers=headers)
        response = await handler(request)
        if rule.delay_after:
            await asyncio.sleep(rule.delay_after)
        if rule.rewrite_urls_to:
            data = json.loads(response.body)
            for name in ("status_url", "response_url", "cancel_url"):
                parts = urlsplit(data[name])
                origin = urlsplit(rule.rewrite_urls_to)
                data[name] = urlunsplit((origin.scheme, origin.netloc, parts.path, parts.query, ""))
            return web.json_response(data, status=response.status, headers={
                k: v for k, v in response.headers.items() if k.lower().startswith("x-fal")})
        return response


@contextmanager
def serve(handlers: Optional[dict] = None, *, faults: Optional[Faults] = None, keys=(SERVER_KEY,), **settings):
    """``(server, base_url, faults)`` for a real FalServer on 127.0.0.1 (stopped on exit)."""
    faults = faults or Faults()
    server = FalServer(handlers or real_handlers(), ServerSettings(keys=tuple(keys), require_key=bool(keys), **settings),
                       middlewares=[faults.middleware])
    with BackgroundServer(server) as running:
        yield server, running.base_url, faults


class _RecorderApp:
    def __init__(self):
        self.seen: list[Seen] = []

    def make_app(self) -> web.Application:
        async def record(request: web.Request) -> web.Response:
            self.seen.append(Seen(request.method, request.path, stage_of(request.method, request.path),
                                  request.headers.get("Authorization")))
            # the answer a hostile host would give to keep a client talking to it
            return web.json_response({"status": "IN_PROGRESS", "logs": []}, status=202)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        return app


@contextmanager
def recorder():
    """``(app, base_url)``: a loopback server that answers everything and records it."""
    app = _RecorderApp()
    with BackgroundServer(app) as running:
        yield app, running.base_url


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def job_states(server: FalServer) -> list[str]:
    return [job.state for job in list(server.jobs.values())]


def running_jobs(server: FalServer) -> int:
    """Jobs accepted and not finished (queued or running)."""
    return sum(state != "COMPLETED" for state in job_states(server))


def limit_concurrency(faults: Faults, server: FalServer, limit: int, retry_after: Optional[str] = "1",
                      detail: str = "Concurrency limit reached: 2 requests at a time") -> Faults:
    """fal's concurrency limit: a submit gets 429 (with ``Retry-After`` unless None) while
    ``limit`` accepted jobs are unfinished. The check and the job's creation happen on the
    server's event loop without a pause between them, so the limit is exact."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return faults.add("submit", times=10_000, status=429, body={"detail": detail}, headers=headers,
                      when=lambda: running_jobs(server) >= limit)
