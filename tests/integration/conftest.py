"""One real headless ComfyUI for every test in tests/integration/.

The server starts once per session with its own base directory (the pack copied into
custom_nodes the way a user's clone sits there, the test-only probe nodes beside it, test
checkpoints in models/sams, test images in input; see testsupport.comfy_assets), so the API,
workflow, browser and remote tests share one start-up. It runs with ``--cache-none``: ComfyUI
re-executes every node on every run, so what keeps a second run from loading a model again is
the pack's own model cache alone (test_comfyui_api checks it).

Everything here is skipped, with the reason, when COMFYUI_PATH is unset (CI has no ComfyUI).
Set SAMKIT_TEST_ARTIFACTS=<folder> to keep screenshots and saved outputs of the runs there.
"""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.fixture(scope="session")
def comfy_server(comfyui_checkout, tmp_path_factory):
    base = comfy_assets.prepare_base(ROOT, tmp_path_factory.mktemp("comfyui_base"))
    server = comfyui.ComfyUIServer.start(
        comfyui_checkout, base,
        # --disable-api-nodes: Comfy's partner-API nodes only slow the start-up; not tested here
        extra_args=["--cache-none", "--disable-api-nodes"],
        # the remote nodes read their endpoint and key from this file when they run; the remote
        # test writes it once its self-hosted server is up
        env={"SAMKIT_FAL_CONFIG": str(base / "samkit-fal.ini")},
    )
    yield server
    server.stop()


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
def page(comfy_server, tmp_path_factory):
    """The ComfyUI page of the session's server in headless Chromium (skipped without Playwright/Chromium)."""
    reason = browser.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = browser.launch(playwright, tmp_path_factory.mktemp("chromium_profile"))
        try:
            yield browser.open_comfyui(context, comfy_server.url, ["SamKitTinySAM", "LoadImage"])
        finally:
            context.close()
