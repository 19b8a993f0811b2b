"""``GET /{owner}/{app}/requests/{id}/status/stream``: fal's server-sent-events status stream, what
fal-js ``subscribe(..., {mode: "streaming"})`` and ``queue.streamStatus`` read.

Each event is ``data: <status JSON>\\n\\n``, the same body as ``…/status`` (``status``,
``queue_position`` or ``logs``, the request's URLs), sent when something changed: the state,
the queue position, or new log lines. With ``?logs=1`` an event carries only the log lines new
since the previous event (fal-js accumulates them itself: "accumulate logs to match previous
polling behavior", ``queue.ts``). The stream ends, the server closing it, right after the
``COMPLETED`` event; fal-js then reads the result from the response URL. While nothing changes a
comment line (``: keep-alive``) is sent every ``KEEPALIVE_S`` seconds so proxies keep it open;
the stream also ends when the client goes away.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Callable

from aiohttp import web

POLL_S = 0.05
KEEPALIVE_S = 10.0


async def stream_status(request: web.Request, job, status_body: Callable[[bool], dict]) -> web.StreamResponse:
    """Stream ``job``'s status to the client until it completes. ``status_body(with_logs)`` is the
    ``…/status`` answer for the job now."""
    with_logs = request.query.get("logs", "0").lower() in ("1", "true", "yes")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no", "x-fal-request-id": job.id})
    await response.prepare(request)
    sent_logs, last_key, last_write = 0, None, time.monotonic()
    try:
        while True:
            state = job.state  # read once: COMPLETED is set last, so the record is whole when it shows
            body = status_body(False)
            body["status"] = state
            logs = list(job.logs)
            key = (state, body.get("queue_position"), len(logs))
            if key != last_key:
                if state != "IN_QUEUE":
                    body["logs"] = logs[sent_logs:] if with_logs else None
                await response.write(f"data: {json.dumps(body)}\n\n".encode())
                sent_logs, last_key, last_write = len(logs), key, time.monotonic()
            elif time.monotonic() - last_write > KEEPALIVE_S:
                await response.write(b": keep-alive\n\n")
                last_write = time.monotonic()
            if state == "COMPLETED":
                break
            await asyncio.sleep(POLL_S)
        await response.write_eof()
    except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
        pass  # the client went away; the job itself runs on
    return response
