"""Test-only route ``GET /samkit_test/memory``: what the server process holds, for tests/integration/test_memory.py.

It reports, without changing anything (no garbage collection, no cache access that loads):

* ``rss_bytes``: the server process's resident set size (psutil);
* ``comfy_loaded``: ComfyUI's loaded-model list (``comfy.model_management.current_loaded_models``),
  each entry's patcher class, the pack's model name (``SamKitWeights.samkit_name``) and device;
* ``pack_cached`` / ``load_count``: the pack loader's cached model names and its file-load count;
* ``patchers``: how many ModelPatchers the pack's bridge holds (one per live LoadedModel);
* ``embeddings`` / ``embedding_bytes``: the pack's image-embedding cache;
* ``flags_pending``: a ``POST /free`` the worker thread has not taken up yet.
"""

from __future__ import annotations

import sys

from aiohttp import web

PACK = "comfyui-sam-kit"


def _pack_module(suffix: str):
    """The pack's module ``suffix`` as ComfyUI imported it, or None before anything imported it."""
    for name, module in list(sys.modules.items()):
        if name.endswith(f"{PACK}.{suffix}"):
            return module
    return None


def _loaded_entries() -> list:
    import comfy.model_management as mm

    entries = []
    for entry in list(mm.current_loaded_models):
        patcher = entry.model
        managed = getattr(patcher, "model", None)
        entries.append({
            "patcher": type(patcher).__name__ if patcher is not None else None,
            "name": getattr(managed, "samkit_name", None),
            "device": str(entry.device),
        })
    return entries


def report() -> dict:
    import psutil
    from server import PromptServer

    loader = _pack_module("samkit.loader")
    bridge = _pack_module("nodes.comfy_memory")
    if loader is None or bridge is None:
        raise LookupError(f"{PACK} is not loaded in this ComfyUI")
    cache_module = _pack_module("samkit.embedding_cache")  # imported by the first Tiny SAM run
    embeddings = cache_module.embeddings if cache_module is not None else []
    return {
        "rss_bytes": psutil.Process().memory_info().rss,
        "comfy_loaded": _loaded_entries(),
        "pack_cached": [model.name for model in loader.cached_models()],
        "load_count": loader.load_count,
        "patchers": len(bridge._patchers),
        "embeddings": len(embeddings),
        "embedding_bytes": embeddings.nbytes if cache_module is not None else 0,
        "flags_pending": bool(PromptServer.instance.prompt_queue.get_flags(reset=False)),
    }


def register() -> None:
    from server import PromptServer

    @PromptServer.instance.routes.get("/samkit_test/memory")
    async def memory(_request):
        return web.json_response(report())
