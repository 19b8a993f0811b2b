"""A self-hosted endpoint that speaks fal's queue protocol for the pack's two jobs.

    python -m samkit serve --model mobile_sam.pt --key-file ~/.config/comfyui-sam-kit/server-keys.txt
    python -m samkit serve --tiny-sam-model FastSAM-s.pt --segmap-model mobile_sam.pt --no-require-key

It serves ``fal-ai/tiny-sam`` and ``fal-ai/image-preprocessors/sam`` with fal's input and output
schemas, running the same library code as the local nodes (``samkit.tiny_sam_job.segment_with_prompts``
and ``samkit.segmap.segmentation_map``), so the remote nodes and fal's own clients (``fal-client``,
``@fal-ai/client``) work against it unchanged:

* submit ``POST /{owner}/{app}[/{path}]`` (``?fal_webhook=``: :mod:`.webhooks`), status
  ``GET /{owner}/{app}/requests/{id}/status``, its event stream ``…/status/stream``
  (:mod:`.status_stream`), result ``GET /{owner}/{app}/requests/{id}``, cancel ``PUT …/cancel``;
* the synchronous run (fal's ``https://fal.run/{app}``) at ``POST /run/{owner}/{app}``: the
  result (or the error) in the response; a client that drops the connection cancels the job.
  ``fal.run`` and ``queue.fal.run`` differ by host, and the bare path here is the queue's, so
  ``fal_client.run`` is pointed here with ``FAL_RUN_HOST=<host:port>/run``;
* a real queue: N worker threads, a bounded length (429 when full), 0-based queue positions,
  cancellation (a queued job is dropped; a running one is told to stop at its next check),
  results kept for ``--result-ttl`` seconds, ``X-Fal-Request-Timeout`` enforced at its deadline;
* ``Authorization: Key <key>`` checked against ``--key-file`` (one key per line); CORS and the
  public URL behind a TLS front: :mod:`.web_edges`;
* 422 ``{"detail": [{loc, msg, type}]}`` for inputs that break the schema (at submit) or that
  the job refuses (at result, e.g. a point outside the image);
* result images at ``/files/<id>.png`` (unguessable names, like fal's CDN URLs); a request for
  a file that carries an ``Authorization`` header is refused, so a client leaking its key to
  the file host fails loudly.

Images come in as base64 data URIs (any MIME label; the bytes decide), or as https URLs when the
operator allows their hosts (``--fetch-host``, :mod:`.url_fetch`); by default the server fetches
nothing (no SSRF from a studio box) and its 422 says how to allow it.

The queue under it is :mod:`.job_queue`, the jobs and their handlers :mod:`.jobs` and
:mod:`.handlers`; :mod:`.hosting` runs it, :mod:`.cli` is ``python -m samkit serve``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from typing import Any, Iterable, Optional, Union

from aiohttp import web

from . import schemas, webhooks
from .errors import redact
from .job_queue import JobQueue
from .jobs import Handler, Job, ServerSettings, error_detail
from .schemas import AppId
from .status_stream import stream_status
from .url_fetch import OutboundRefused, check_url
from .web_edges import cors_middleware, public_base

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
        self._webhook_tasks: set[asyncio.Task] = set()

    # -------------------------------------------------------------- app

    def make_app(self) -> web.Application:
        # CORS outermost: preflights skip the key check, and a 401 still reaches the browser app
        edges = [cors_middleware(self.settings.cors_origins)] if self.settings.cors_origins else []
        app = web.Application(client_max_size=MAX_BODY_BYTES,
                              middlewares=[*edges, *self._middlewares, self._errors_and_auth])
        r = app.router
        r.add_get("/health", self._health)
        r.add_get("/files/{name}", self._file)
        r.add_get("/{owner}/{alias}/requests/{request_id}/status", self._status)
        r.add_get("/{owner}/{alias}/requests/{request_id}/status/stream", self._status_stream)
        r.add_put("/{owner}/{alias}/requests/{request_id}/cancel", self._cancel)
        r.add_get("/{owner}/{alias}/requests/{request_id}", self._result)
        r.add_get("/{owner}/{alias}/requests/{request_id}/", self._result)
        r.add_post("/run/{tail:.+}", self._run)
        r.add_post("/{tail:.+}", self._submit)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app) -> None:
        await self.start_workers()

    async def _on_cleanup(self, _app) -> None:
        for task in list(self._webhook_tasks):
            task.cancel()
        await asyncio.gather(*self._webhook_tasks, return_exceptions=True)
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
        given_b = given.strip().encode("utf-8", "surrogateescape")  # aiohttp keeps non-UTF-8 bytes as surrogates
        ok = False
        for key in self.settings.keys:  # compare against every key: no timing hint about which matched
            ok |= hmac.compare_digest(given_b, key.encode())
        return ok

    def _base(self, request: web.Request) -> str:
        return public_base(request, self.settings.public_url, self.settings.trusted_proxies)

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

    async def _accept(self, request: web.Request, webhook: Optional[str]) -> Union[Job, web.Response]:
        """A validated, queued job for this submit (or run), or the error answer."""
        endpoint_id = request.match_info["tail"].strip("/")
        if endpoint_id not in self.handlers:
            return self._json({"detail": f"Application {endpoint_id!r} not found; this server runs "
                                         f"{', '.join(sorted(self.handlers))}"}, 404)
        raw = await request.read()
        try:
            arguments = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's parser goes
            return self._json({"detail": [{"loc": ["body"], "msg": "Invalid JSON", "type": "json_invalid"}]}, 422)
        errors = schemas.VALIDATORS[endpoint_id](arguments) + self._url_errors(arguments)
        if webhook is not None:
            why = webhooks.refusal(webhook, self.settings.webhooks)
            if why:
                errors.append({"loc": ["query", "fal_webhook"], "msg": why, "type": "value_error"})
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
        job = Job(str(uuid.uuid4()), AppId.parse(endpoint_id), endpoint_id, arguments, start_by=start_by,
                  webhook=webhook, public_base=self._base(request))
        job.submitted_position = await self.enqueue(job)
        log.info("queued %s request %s (position %d)", endpoint_id, job.id, job.submitted_position)
        return job

    def _url_errors(self, arguments: Any) -> list:
        """An https image_url this server may not fetch, refused at submit (the fetch itself is the job's)."""
        url = arguments.get("image_url") if isinstance(arguments, dict) else None
        if not (isinstance(url, str) and url.startswith("https://")):
            return []
        policy = self.settings.fetch
        if not policy.enabled:
            msg = ("This server does not fetch image URLs unless its operator allows their hosts: start it with "
                   "--fetch-host <host> (repeatable; see the README's self-hosted section), or send the image "
                   "as a data:image/...;base64 URI")
        else:
            try:
                check_url(url, policy, "image_url")
                return []
            except OutboundRefused as exc:
                msg = f"{exc} (the operator adds hosts with --fetch-host)"
        return [{"loc": ["body", "image_url"], "msg": msg, "type": "value_error"}]

    async def _submit(self, request: web.Request) -> web.Response:
        job = await self._accept(request, request.query.get("fal_webhook"))
        if isinstance(job, web.Response):
            return job
        return self._json({"request_id": job.id, "gateway_request_id": job.id, "status": "IN_QUEUE",
                           "queue_position": job.submitted_position, **self._urls(request, job)}, 200, job)

    async def _run(self, request: web.Request) -> web.Response:
        """fal's synchronous run: queue the job like a submit, answer its result (or error) when it
        ends. A client that goes away cancels it, as on fal."""
        if "fal_webhook" in request.query:
            return self._json({"detail": [{"loc": ["query", "fal_webhook"], "type": "value_error",
                                           "msg": "Webhooks go with queue submits, not with the synchronous run"}]},
                              422)
        job = await self._accept(request, None)
        if isinstance(job, web.Response):
            return job
        while job.state != "COMPLETED":
            if request.transport is None or request.transport.is_closing():
                await self.cancel_job(job)
                log.info("run %s: the client went away; cancelled", job.id)
                break
            await asyncio.sleep(0.05)
        return self._result_answer(self._base(request), job)

    def _status_body(self, request: web.Request, job: Job, with_logs: bool) -> dict:
        body: dict = {"status": job.state, "request_id": job.id, **self._urls(request, job)}
        if job.state == "IN_QUEUE":
            body["queue_position"] = self.queue_position(job)
        else:
            body["logs"] = list(job.logs) if with_logs else None
        if job.state == "COMPLETED":
            body.update(metrics=job.metrics, error=job.error, error_type=job.error_type)
        return body

    async def _status_stream(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        if job is None:
            return self._json({"detail": "Request not found"}, 404)
        return await stream_status(request, job, lambda with_logs: self._status_body(request, job, with_logs))

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
        return self._result_answer(self._base(request), job)

    def _result_body(self, base: str, job: Job) -> tuple[int, dict]:
        if job.failure is not None:
            return job.failure
        file_id, width, height, size = job.output
        return 200, schemas.image_output(f"{base}/files/{file_id}.png", width, height, size, f"{file_id}.png")

    def _result_answer(self, base: str, job: Job) -> web.Response:
        status, body = self._result_body(base, job)
        extra = {"X-Fal-Request-Timeout-Type": "user"} if job.error_type == "request_timeout" else None
        return self._json(body, status, job, extra)

    def on_finished(self, job: Job) -> None:
        if not job.webhook:
            return
        status, body = self._result_body(job.public_base, job)
        task = asyncio.get_running_loop().create_task(webhooks.deliver(
            job.webhook, webhooks.payload(job.id, status, body), self.settings.webhooks,
            self.settings.webhook_retries, job.id))
        self._webhook_tasks.add(task)
        task.add_done_callback(self._webhook_tasks.discard)

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

