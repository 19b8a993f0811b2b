"""The Tiny SAM editor's live preview route on ComfyUI's server (part of the bridge; see comfy_bridge.py).

``POST /samkit/preview`` (and ``/api/samkit/preview``: ComfyUI serves every route of
``PromptServer.instance.routes`` under both) takes the JSON that ``web/js/mask_preview.js`` sends
and answers ``samkit.preview.Previewer.preview``'s JSON, or ``{"error": message}`` with an HTTP
status the editor shows as a readable line. This module only connects: image folders are
``folder_paths``' (the ones ``/view`` serves), "busy" is ComfyUI's queue having a running prompt
(the node may be using the model then, and ComfyUI's model management is not made for two
threads), and the work runs on a small thread pool so the server's event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor

from ..samkit.preview import IMAGE_TYPES, Previewer, PreviewError

log = logging.getLogger("comfyui-sam-kit")

ROUTE = "/samkit/preview"
MAX_BODY = 256 * 1024  # bytes: prompts are capped far below this (samkit.preview.MAX_TEXT)
_installed = False


def _folders() -> dict:
    import folder_paths  # type: ignore

    return {kind: folder_paths.get_directory_by_type(kind) for kind in IMAGE_TYPES}


def _busy():
    from server import PromptServer  # type: ignore

    running, _queued = PromptServer.instance.prompt_queue.get_current_queue_volatile()
    return "a workflow is running; the preview comes back when it ends" if running else None


def install() -> bool:
    """Register the route once (inside ComfyUI, before its server adds its routes); whether it did."""
    global _installed
    if _installed:
        return True
    try:
        from aiohttp import web
        from server import PromptServer  # type: ignore

        routes = PromptServer.instance.routes
    except Exception as exc:  # no server (tests, scripts): nothing to register on
        log.debug("SAM Kit: no preview route: %s", exc)
        return False
    previewer = Previewer(_folders, _busy)
    # a few threads: a newer request must reach the previewer while an older one waits, to supersede it
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="samkit-preview")

    @routes.post(ROUTE)
    async def samkit_preview(request):
        too_large = web.json_response({"error": "the preview request is too large"}, status=413)
        if (request.content_length or 0) > MAX_BODY:
            return too_large
        data = bytearray()  # read to MAX_BODY + 1 at most: a chunked body has no Content-Length to check
        while len(data) <= MAX_BODY:
            chunk = await request.content.read(MAX_BODY + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > MAX_BODY:
            return too_large
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's parser goes
            return web.json_response({"error": "the preview request is not JSON"}, status=400)
        try:
            answer = await asyncio.get_running_loop().run_in_executor(pool, previewer.preview, body)
        except PreviewError as exc:
            return web.json_response({"error": exc.message, "retry": exc.retry}, status=exc.status)
        except Exception as exc:  # a bug or a library failure: the log has the trace, the editor a line
            log.exception("SAM Kit: preview failed")
            return web.json_response({"error": f"preview failed: {type(exc).__name__}: {exc}"[:500]}, status=500)
        return web.json_response(answer)

    _installed = True
    return True
