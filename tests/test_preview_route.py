"""The preview route's own edge (nodes/comfy_preview.py), on a real aiohttp server on 127.0.0.1.

ComfyUI is not started here (tests/integration/test_preview_browser.py does that): a stand-in
``server.PromptServer`` offers the route table the route registers on, as ComfyUI's does. What is
checked is what the route does before the previewer: bodies that are not JSON, too deeply nested
for Python's parser, or too large even when sent without a Content-Length (chunked), get a JSON
error line with a 4xx status, never a 500 with a traceback in ComfyUI's log.
"""

from __future__ import annotations

import asyncio
import sys
import types

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from comfyui_sam_kit.nodes import comfy_preview


def _app(monkeypatch) -> web.Application:
    routes = web.RouteTableDef()
    queue = types.SimpleNamespace(get_current_queue_volatile=lambda: ([], []))
    instance = types.SimpleNamespace(routes=routes, prompt_queue=queue)
    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=instance)))
    monkeypatch.setattr(comfy_preview, "_installed", False)
    assert comfy_preview.install()
    app = web.Application()
    app.add_routes(routes)
    return app


def _post_all(app, bodies):
    async def go():
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            answers = []
            for body in bodies:
                response = await client.post(comfy_preview.ROUTE, data=body)
                answers.append((response.status, await response.json()))
            return answers

    return asyncio.run(go())


def test_bodies_the_route_cannot_take_get_a_json_error_not_a_500(monkeypatch):
    app = _app(monkeypatch)

    async def chunks():  # no Content-Length: the size is known only while reading
        for _ in range(comfy_preview.MAX_BODY // 65536 + 2):
            yield b" " * 65536

    deep = b"[" * 100_000  # json.loads raises RecursionError, not ValueError, on this
    answers = _post_all(app, [b"not json", deep, chunks()])
    assert [status for status, _ in answers] == [400, 400, 413], answers
    assert all("preview request" in body["error"] for _, body in answers)
