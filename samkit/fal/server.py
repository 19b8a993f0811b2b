"""A self-hosted endpoint that speaks fal's queue protocol for the pack's two jobs.

    python -m samkit serve --model mobile_sam.pt --key-file ~/.config/comfyui-sam-kit/server-keys.txt
    python -m samkit serve --tiny-sam-model FastSAM-s.pt --segmap-model mobile_sam.pt --no-require-key

It serves ``fal-ai/tiny-sam`` and ``fal-ai/image-preprocessors/sam`` with fal's input and output
schemas, running the same library code as the local nodes (``samkit.tiny_sam_job.segment_with_prompts``
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

The queue under it is :mod:`.job_queue`, the jobs and their handlers :mod:`.jobs` and
:mod:`.handlers`; :mod:`.hosting` runs it, :mod:`.cli` is ``python -m samkit serve``.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from typing import Any, Iterable, Optional

from aiohttp import web

from . import schemas
from .errors import redact
from .job_queue import JobQueue
from .jobs import Handler, Job, ServerSettings, error_detail
from .schemas import AppId

log = logging.getLogger("comfyui-sam-kit.fal.server")

MAX_BODY_BYTES = schemas.MAX_DATA_URI_CHARS + (1 << 20)


class FalServer(JobQueue):
    """The HTTP app over the job queue. ``handlers`` maps endpoint ids to functions ``(arguments, ctx)``."""

    def __init__(self, handlers: dict[str, Handler], settings: ServerSettings | None = None,
                 middlewares: Iterable = ()):
        unknown = set(handlers) - set(schemas.ENDPOINT_IDS)
        if unknown:
            raise ValueError(f"no schema for endpoint(s) {sorted(unknown)}; known: {schemas.ENDPOINT_IDS}")
        if not handlers:
            raise ValueError("the server needs at least one endpoint (a tiny-sam or a seg map model)")
        super().__init__(handlers, settings or ServerSettings())
        if self.settings.require_key and not self.settings.keys:
            raise ValueError("require_key is set but no keys were given")
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
        await self.start_workers()

    async def _on_cleanup(self, _app) -> None:
        await self.stop_workers()

    @web.middleware
    async def _errors_and_auth(self, request: web.Request, handler):
        if request.path != "/health" and not request.path.startswith("/files/") and not self._authorised(request):
            return web.json_response({"detail": "Missing or invalid key: send 'Authorization: Key <key>' with a key "
                                                "this server accepts."}, status=401)
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return web.json_response(error_detail(f"Request body is larger than {MAX_BODY_BYTES} bytes", (), "too_large"),
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
                           "queued": self.queued, "max_queue": self.settings.max_queue})

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
        if self.queued >= self.settings.max_queue:
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
        position = await self.enqueue(job)
        log.info("queued %s request %s (position %d)", endpoint_id, job.id, position)
        return self._json({"request_id": job.id, "status": "IN_QUEUE", "queue_position": position,
                           **self._urls(request, job)}, 200, job)

    def _status_body(self, request: web.Request, job: Job, with_logs: bool) -> dict:
        body: dict = {"status": job.state, "request_id": job.id, **self._urls(request, job)}
        if job.state == "IN_QUEUE":
            body["queue_position"] = self.queue_position(job)
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
        await self.cancel_job(job)
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

