"""Headless Debian Chromium driven by Playwright, for tests of the pack's frontend in the real
ComfyUI page (served by a ``testsupport.comfyui.ComfyUIServer``).

* ``skip_reason() -> str | None``: why browser tests cannot run here (no ``COMFYUI_PATH``, no
  Playwright, no Chromium), or None.
* ``chromium_path() -> str | None``: ``SAMKIT_CHROMIUM`` or Debian's ``chromium`` on PATH.
  Playwright's own browser downloads are never used (CI has no ``playwright install``).
* ``launch(playwright, user_data_dir) -> BrowserContext``: a fresh profile, every request that is
  not to 127.0.0.1 / localhost aborted (the ComfyUI page links to fonts and docs on the web).
* ``open_comfyui(context, url, node_types, vue_nodes=False) -> Page``: the ComfyUI page once the
  app is up, the given node types are registered, and the renderer is the one asked for (with
  ``vue_nodes``, Nodes 2.0 has drawn the graph's nodes as ``[data-node-id]`` elements).
  ``page.page_errors`` collects uncaught exceptions from then on, and any raised earlier from this
  pack's own scripts (the 1.27 frontend throws one of its own while loading settings; that one is
  not the pack's to answer for). ``page.pack_console`` collects console errors and warnings that
  the pack's scripts log (by their source, or the "[SAM Kit]" prefix the pack logs with).
* ``screenshot_rgb(page) -> numpy array``: the viewport as H×W×3 uint8 (1 CSS px = 1 px).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import urlsplit

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
PACK_SCRIPTS = "/extensions/comfyui-sam-kit/"


def chromium_path() -> Optional[str]:
    configured = os.environ.get("SAMKIT_CHROMIUM", "").strip()
    if configured:
        return configured if Path(configured).is_file() else None
    return shutil.which("chromium")


def skip_reason() -> Optional[str]:
    if not os.environ.get("COMFYUI_PATH", "").strip():
        return ("COMFYUI_PATH is not set: the editor is tested in the real ComfyUI page, served by a "
                "ComfyUI checkout (COMFYUI_PYTHON names its Python if that is not this one)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; its browser download is not needed)"
    if chromium_path() is None:
        return "no Chromium: apt-get install chromium (Debian), or set SAMKIT_CHROMIUM to a Chromium binary"
    return None


def _loopback_only(route) -> None:
    host = urlsplit(route.request.url).hostname or ""
    if route.request.url.startswith(("data:", "blob:")) or host in LOOPBACK:
        route.continue_()
    else:
        route.abort("blockedbyclient")


def launch(playwright, user_data_dir: Path):
    context = playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS,
        viewport=VIEWPORT, device_scale_factor=1, timeout=60_000,
    )
    context.route("**/*", _loopback_only)
    return context


def open_comfyui(context, url: str, node_types: Iterable[str] = (), timeout_ms: int = 90_000, vue_nodes: bool = False):
    page = context.pages[0] if context.pages else context.new_page()
    page.page_errors = []  # uncaught exceptions in the page, for assertions
    page.pack_console = []  # console errors and warnings logged by the pack's scripts, for assertions

    def on_console(message) -> None:
        source = (message.location or {}).get("url", "")
        if message.type in ("error", "warning") and (PACK_SCRIPTS in source or "[SAM Kit]" in message.text):
            page.pack_console.append(f"{message.type}: {message.text} ({source})")

    page.on("console", on_console)
    loaded = {"done": False}

    def on_error(exc) -> None:
        stack = getattr(exc, "stack", "") or ""
        if loaded["done"] or PACK_SCRIPTS in stack:
            page.page_errors.append(f"{exc}\n{stack}")

    page.on("pageerror", on_error)
    page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
    page.wait_for_function(
        """(types) => !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph
                         && types.every((t) => !!LiteGraph.registered_node_types[t]))""",
        arg=list(node_types), timeout=timeout_ms,
    )
    # The app restores (or, for a fresh profile, loads the default) workflow after it is up; a
    # graph built before that would be replaced. Wait for that graph, then for it to settle.
    page.wait_for_function("() => app.graph.nodes.length > 0", timeout=timeout_ms)
    # the renderer the test asked for, or a clear failure (not the other renderer tested twice)
    setting = page.evaluate("() => app.ui.settings.getSettingValue('Comfy.VueNodes.Enabled') ?? false")
    assert setting == vue_nodes, f"the page has Comfy.VueNodes.Enabled={setting}, the test wants {vue_nodes}"
    if vue_nodes:
        page.wait_for_function("() => document.querySelectorAll('[data-node-id]').length > 0", timeout=timeout_ms)
    page.wait_for_timeout(1000)
    loaded["done"] = True
    return page


def screenshot_rgb(page):
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(page.screenshot())) as image:
        return np.asarray(image.convert("RGB"))
