"""A stand-in for fal's queue in front of a fal App served on 127.0.0.1 (tests only): submit
``POST /<owner>/<app>/<route>`` runs the request against the App's own route (as fal's gateway
hands a queued request to a runner), then status answers ``COMPLETED`` and result the App's
answer with its status code. Only what the remote nodes need; the real queue is fal's."""

from __future__ import annotations

import asyncio
import threading
import uuid
from contextlib import contextmanager

import httpx
from aiohttp import web


@contextmanager
def queue_gateway(app_url: str, key: str):
    jobs: dict[str, tuple[int, bytes]] = {}
    seen: list[str] = []

    async def submit(request: web.Request):
        if request.headers.get("Authorization") != f"Key {key}":
            return web.json_response({"detail": "bad key"}, status=401)
        owner, alias, *route = request.match_info["tail"].split("/")
        seen.append("/".join([owner, alias, *route]))
        body = await request.read()
        async with httpx.AsyncClient(trust_env=False, timeout=120) as client:
            answer = await client.post(f"{app_url}/{'/'.join(route)}", content=body,
                                       headers={"content-type": "application/json"})
        rid = uuid.uuid4().hex
        jobs[rid] = (answer.status_code, answer.content)
        url = f"{base[0]}/{owner}/{alias}/requests/{rid}"
        return web.json_response({"request_id": rid, "status": "IN_QUEUE", "queue_position": 0,
                                  "status_url": f"{url}/status", "response_url": url, "cancel_url": f"{url}/cancel"})

    async def status(request: web.Request):
        return web.json_response({"status": "COMPLETED", "logs": [], "metrics": {}})

    async def result(request: web.Request):
        code, body = jobs[request.match_info["rid"]]
        return web.Response(body=body, status=code, content_type="application/json",
                            headers={"x-fal-request-id": request.match_info["rid"]})

    app = web.Application(client_max_size=16 << 20)
    app.router.add_get("/{owner}/{alias}/requests/{rid}/status", status)
    app.router.add_get("/{owner}/{alias}/requests/{rid}", result)
    app.router.add_post("/{tail:.+}", submit)
    loop, ready, base = asyncio.new_event_loop(), threading.Event(), [""]
    runner = web.AppRunner(app)

    def main():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        base[0] = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield base[0], seen
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
