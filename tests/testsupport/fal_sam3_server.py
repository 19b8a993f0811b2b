"""A loopback fal-protocol server for fal's current SAM endpoints (sam-3/image(-rle), sam-3-1,
sam2/auto-segment), answering only with the output fields recorded in
``tests/vectors/fal_sam3_shapes.json`` (from fal's published types).

Queue protocol as :mod:`testsupport.fal_server`'s real server speaks it: submit (checked against
the published input schema: a 422 in fal's shape otherwise; the check is ``sam3_schemas``' own
validator, so the test asserts the client refuses first), status (``IN_QUEUE`` once, then
``COMPLETED``), result, cancel, and ``/files/<name>`` for mask images served by URL. What a job
answers is ``answer(endpoint_id, arguments, files)``, given by the test; ``files`` stores PNG
bytes and returns their URL.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from aiohttp import web

from comfyui_sam_kit.samkit.fal import sam3_schemas

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "fal_sam3_shapes.json").read_text())
SERVER_KEY = "sam3-id:sam3-secret-0123456789"


def fal_endpoint_of(endpoint_id: str) -> str:
    """fal's id for a request: itself, or (the pack's deployed App, ``owner/app/auto-segment``) fal's."""
    if endpoint_id in VECTORS["endpoints"]:
        return endpoint_id
    assert endpoint_id.endswith("/auto-segment"), endpoint_id
    return "fal-ai/sam2/auto-segment"


def published_output_fields(endpoint_id: str) -> set:
    entry = VECTORS["endpoints"][fal_endpoint_of(endpoint_id)]
    if "output_fields" not in entry:  # an alias: "Sam31ImageRleOutput = SAM3RLEOutput"
        alias = {"SAM3RLEOutput": "fal-ai/sam-3/image-rle", "Sam3ImageOutput": "fal-ai/sam-3/image"}
        entry = VECTORS["endpoints"][next(v for k, v in alias.items() if k in entry["output"])]
    return {name.rstrip("?") for name in entry["output_fields"]}


class Sam3Server:
    def __init__(self, answer: Callable):
        self.answer = answer
        self.received: list[tuple[str, dict]] = []
        self.stages: list[str] = []
        self.jobs: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self.base = ""
        #: keep every job IN_QUEUE (a busy queue), for cancel and timeout tests
        self.hold = False

    def store(self, png: bytes) -> str:
        name = f"{uuid.uuid4().hex}.png"
        self.files[name] = png
        return f"{self.base}/files/{name}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 << 20)
        app.router.add_get("/files/{name}", self._file)
        app.router.add_get("/{owner}/{alias}/requests/{rid}/status", self._status)
        app.router.add_put("/{owner}/{alias}/requests/{rid}/cancel", self._cancel)
        app.router.add_get("/{owner}/{alias}/requests/{rid}", self._result)
        app.router.add_post("/{tail:.+}", self._submit)
        return app

    async def _submit(self, request: web.Request):
        self.stages.append("submit")
        if request.headers.get("Authorization") != f"Key {SERVER_KEY}":
            return web.json_response({"detail": "bad key"}, status=401)
        endpoint_id = request.match_info["tail"]
        body = await request.json()
        self.received.append((endpoint_id, body))
        errors = sam3_schemas.validator_for(fal_endpoint_of(endpoint_id))(body)
        if errors:
            return web.json_response({"detail": errors}, status=422)
        output = self.answer(endpoint_id, body, self.store)
        unpublished = set(output) - published_output_fields(endpoint_id)
        assert not unpublished, f"the test answered fields fal does not publish: {unpublished}"
        rid = uuid.uuid4().hex
        owner, alias = endpoint_id.split("/")[:2]
        self.jobs[rid] = {"output": output, "polls": 0}
        url = f"{self.base}/{owner}/{alias}/requests/{rid}"
        return web.json_response({"request_id": rid, "status": "IN_QUEUE", "queue_position": 0,
                                  "status_url": f"{url}/status", "response_url": url, "cancel_url": f"{url}/cancel"})

    async def _status(self, request: web.Request):
        self.stages.append("status")
        job = self.jobs.get(request.match_info["rid"])
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        job["polls"] += 1
        if job["polls"] == 1 or self.hold:
            return web.json_response({"status": "IN_QUEUE", "queue_position": 0}, status=202)
        return web.json_response({"status": "COMPLETED", "logs": [], "metrics": {}})

    async def _result(self, request: web.Request):
        self.stages.append("result")
        return web.json_response(self.jobs[request.match_info["rid"]]["output"])

    async def _cancel(self, request: web.Request):
        self.stages.append("cancel")
        if self.hold:
            return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)
        return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)

    async def _file(self, request: web.Request):
        self.stages.append("file")
        if "Authorization" in request.headers:
            return web.json_response({"detail": "a key was sent to the file host"}, status=400)
        return web.Response(body=self.files[request.match_info["name"]], content_type="image/png")


@contextmanager
def serve_sam3(answer: Callable):
    """``Sam3Server`` on a free 127.0.0.1 port, on its own thread and event loop."""
    server, loop, ready = Sam3Server(answer), asyncio.new_event_loop(), threading.Event()
    runner = web.AppRunner(server.app())

    def main():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]
        server.base = f"http://127.0.0.1:{port}"
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10), "the loopback server did not start"
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
