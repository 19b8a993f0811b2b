"""Test set-up shared by every test file.

The repo root is ComfyUI's package (ComfyUI imports it by path). The tests make it importable
as ``comfyui_sam_kit`` without running the root ``__init__`` (one test does run it, the way
ComfyUI does), so test files import ``comfyui_sam_kit.samkit`` and ``comfyui_sam_kit.nodes``.
Dependencies point one way: tests import the pack and tools/; nothing outside tests/ imports tests/.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

if "comfyui_sam_kit" not in sys.modules:
    _pkg = types.ModuleType("comfyui_sam_kit")
    _pkg.__path__ = [str(ROOT)]
    _pkg.__file__ = str(ROOT / "__init__.py")
    sys.modules["comfyui_sam_kit"] = _pkg

# shared helpers live in tests/testsupport (a plain package on sys.path); the modules the tests
# share with tools/ and bench/ (workflow_convert, synthetic_checkpoints) live in tools/
for _folder in (ROOT / "tools", TESTS):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

# Tests never reach beyond loopback; keep inherited proxies from capturing 127.0.0.1 traffic.
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost,::1")
os.environ["no_proxy"] = os.environ["NO_PROXY"]
# ultralytics must not try to phone home or download fonts/assets during tests
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "samkit-ultralytics"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


class _RepoRootIsAFolder:
    """The repo root holds ComfyUI's ``__init__.py`` and is cloned as ``comfyui-sam-kit``, not a
    Python name: collected as a package, pytest imports that file as a lone module, and its relative
    imports fail before any test runs. Collect the root as a plain folder; only ComfyUI imports it.
    A global plugin, because conftest hooks never apply to the folder above their own."""

    @staticmethod
    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(path, parent):
        return pytest.Dir.from_parent(parent, path=path) if path == ROOT else None


def pytest_configure(config):
    if not config.pluginmanager.has_plugin("samkit-repo-root"):
        config.pluginmanager.register(_RepoRootIsAFolder(), "samkit-repo-root")


@pytest.fixture(autouse=True)
def _isolated_model_dir(tmp_path, monkeypatch):
    """Each test gets its own model folder; nothing reads or writes the user's."""
    model_dir = tmp_path / "sams"
    model_dir.mkdir()
    monkeypatch.setenv("SAMKIT_MODELS_DIR", str(model_dir))
    yield model_dir
