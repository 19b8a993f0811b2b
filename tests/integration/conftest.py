"""One real headless ComfyUI for every test in tests/integration/.

The server starts once per session with its own base directory (the pack copied into
custom_nodes the way a user's clone sits there, the test-only probe nodes beside it, test
checkpoints in models/sams, test images in input; see testsupport.comfy_assets), so the API,
workflow, browser and remote tests share one start-up. It runs with ``--cache-none``: ComfyUI
re-executes every node on every run, so what keeps a second run from loading a model again is
the pack's own model cache alone (test_comfyui_api checks it).

Everything here is skipped, with the reason, when COMFYUI_PATH is unset (CI has no ComfyUI).
Set SAMKIT_TEST_ARTIFACTS=<folder> to keep screenshots and saved outputs of the runs there.

Browser tests (those that take ``page``) run once per frontend and renderer: the frontend that
ComfyUI bundles, on its classic canvas ("bundled-classic"), and, when SAMKIT_FRONTEND_ROOT names
another frontend's static folder (``pip install --target DIR comfyui-frontend-package==X`` gives
``DIR/comfyui_frontend_package/static``), that frontend on the classic canvas and with Nodes 2.0
(Vue nodes): "<version>-classic" and "<version>-vue". --front-end-root is a start flag, so that
frontend gets a server of its own; the renderer is a user setting, switched between pages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from testsupport import browser, comfy_assets, comfyui

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def comfyui_checkout() -> Path:
    path = comfyui.comfyui_checkout()
    if path is None:
        pytest.skip(comfyui.SKIP_REASON)
    return path


SERVER_ARGS = [
    "--cache-none",
    # --disable-api-nodes: Comfy's partner-API nodes only slow the start-up; not tested here
    "--disable-api-nodes",
]


def _start_server(comfyui_checkout: Path, base: Path, extra_args=()) -> comfyui.ComfyUIServer:
    return comfyui.ComfyUIServer.start(
        comfyui_checkout, base, extra_args=[*SERVER_ARGS, *extra_args],
        # the remote nodes read their endpoint and key from this file when they run; the remote
        # test writes it once its self-hosted server is up
        env={"SAMKIT_FAL_CONFIG": str(base / "samkit-fal.ini")},
    )


@pytest.fixture(scope="session")
def comfy_server(comfyui_checkout, tmp_path_factory):
    server = _start_server(comfyui_checkout, comfy_assets.prepare_base(ROOT, tmp_path_factory.mktemp("comfyui_base")))
    yield server
    server.stop()


# ---------------------------------------------------------------------------- frontends for browser tests
@dataclass(frozen=True)
class Frontend:
    """One frontend and renderer the browser tests run on; ``root`` None = the one ComfyUI bundles."""

    label: str
    root: Optional[Path]
    vue_nodes: bool

    def __str__(self) -> str:
        return self.label


def _frontend_version(static_root: Path) -> str:
    """The comfyui-frontend-package version installed beside a static folder (pip's dist-info), else "frontend-root"."""
    for info in sorted(static_root.parent.parent.glob("comfyui_frontend_package-*.dist-info")):
        return info.name[len("comfyui_frontend_package-"):-len(".dist-info")]
    return "frontend-root"


def frontends() -> list:
    found = [Frontend("bundled-classic", None, False)]
    value = os.environ.get("SAMKIT_FRONTEND_ROOT", "").strip()
    if value:
        root = Path(value).expanduser().resolve()
        if not (root / "index.html").is_file():
            raise pytest.UsageError(f"SAMKIT_FRONTEND_ROOT={value} is not a frontend's static folder (no index.html)")
        version = _frontend_version(root)
        found += [Frontend(f"{version}-classic", root, False), Frontend(f"{version}-vue", root, True)]
    return found


def pytest_generate_tests(metafunc):
    if "page" in metafunc.fixturenames:
        combos = frontends()
        metafunc.parametrize("frontend", combos, ids=[c.label for c in combos], indirect=True, scope="session")


@pytest.fixture(scope="session")
def frontend(request) -> Frontend:
    return request.param


@pytest.fixture(scope="session")
def _frontend_servers(comfyui_checkout, tmp_path_factory):
    """ComfyUI servers for other frontends, started on first use (one per static root), stopped at the end."""
    servers = {}

    def get(root: Path) -> comfyui.ComfyUIServer:
        if root not in servers:
            base = comfy_assets.prepare_base(ROOT, tmp_path_factory.mktemp("comfyui_base_frontend"))
            servers[root] = _start_server(comfyui_checkout, base, ["--front-end-root", str(root)])
        return servers[root]

    yield get
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="session")
def frontend_server(request, frontend, _frontend_servers) -> comfyui.ComfyUIServer:
    """The server that serves ``frontend``: the shared one for the bundled frontend."""
    if frontend.root is None:
        return request.getfixturevalue("comfy_server")
    return _frontend_servers(frontend.root)


@pytest.fixture(scope="session")
def object_info(comfy_server) -> dict:
    return comfy_server.object_info()


@pytest.fixture(scope="session")
def sams_dir(comfy_server) -> Path:
    return comfy_server.base_dir / "models" / "sams"


@pytest.fixture(scope="session")
def artifacts_dir():
    """SAMKIT_TEST_ARTIFACTS as a Path (created), or None: where runs keep screenshots and outputs."""
    value = os.environ.get("SAMKIT_TEST_ARTIFACTS", "").strip()
    if not value:
        return None
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def page(frontend, frontend_server, tmp_path_factory):
    """The ComfyUI page of ``frontend`` in headless Chromium (skipped without Playwright/Chromium).

    Its ``frontend``, ``comfy_server`` and ``frontend_version`` attributes say what it runs on."""
    reason = browser.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    # the renderer is a per-user setting on the server; the page reads it when it loads
    comfy_assets.set_frontend_setting(frontend_server, "Comfy.VueNodes.Enabled", frontend.vue_nodes)
    with sync_playwright() as playwright:
        context = browser.launch(playwright, tmp_path_factory.mktemp("chromium_profile"))
        try:
            page = browser.open_comfyui(context, frontend_server.url, ["SamKitTinySAM", "LoadImage"],
                                        vue_nodes=frontend.vue_nodes)
            page.frontend = frontend
            page.comfy_server = frontend_server
            yield page
        finally:
            context.close()
