"""Downloads through a real HTTP server on 127.0.0.1: all or nothing."""

import hashlib
import http.server
import socket
import threading
import time
from dataclasses import replace

import pytest

from comfyui_sam_kit.samkit import download, registry, runtime
from comfyui_sam_kit.samkit.download import DownloadError, download_model
from testsupport.checkpoints import build_small_sam, save_sam_checkpoint


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802
        route = self.routes.get(self.path)
        if route is None:
            self.send_response(404)
            self.end_headers()
            return
        body, claimed_length = route
        self.send_response(200)
        self.send_header("Content-Length", str(claimed_length))
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    good = save_sam_checkpoint(build_small_sam(), tmp_path_factory.mktemp("ckpt") / "m.pth").read_bytes()
    _Handler.routes = {
        "/good.pth": (good, len(good)),
        "/cut.pth": (good[: len(good) // 3], len(good)),  # the connection drops early
        "/html.pth": (b"<html>Not a checkpoint</html>", 29),
    }
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", good
    httpd.shutdown()


def _model(name="test.pth", sha256=None):
    return replace(registry.KNOWN_MODELS[0], file_name=name, sha256=sha256)


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "downloads"


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_download_succeeds_with_progress_and_lands_atomically(server, folder, monkeypatch):
    base, good = server
    seen = []

    class Recorder(runtime.Progress):
        def set(self, value):
            super().set(value)
            seen.append((self.value, self.total))

    monkeypatch.setattr(runtime.hooks, "progress", lambda total, label="": Recorder(total, label))
    digest = hashlib.sha256(good).hexdigest()
    path = download_model(_model(sha256=digest), folder, url=f"{base}/good.pth")
    assert path.read_bytes() == good
    assert _leftovers(folder) == ["test.pth"]
    assert seen[-1] == (len(good), len(good))


@pytest.mark.parametrize(
    "route,sha,match",
    [
        ("/missing.pth", None, "HTTP 404"),
        ("/cut.pth", None, "cut short"),
        ("/html.pth", None, "not a PyTorch checkpoint"),
        ("/good.pth", "0" * 64, "checksum mismatch"),
    ],
)
def test_failed_downloads_leave_nothing_behind(server, folder, route, sha, match):
    base, _ = server
    with pytest.raises(DownloadError, match=match) as info:
        download_model(_model(sha256=sha), folder, url=f"{base}{route}")
    assert "put it in" in str(info.value) and str(folder) in str(info.value)
    assert _leftovers(folder) == []


def test_unreachable_host_fails_within_seconds_naming_file_folder_and_url(folder):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mobile_sam.pt"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_model(_model("mobile_sam.pt"), folder, url=url)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "mobile_sam.pt" in message and url in message and str(folder) in message
    assert _leftovers(folder) == []


def test_interrupt_mid_download_leaves_nothing(server, folder, monkeypatch):
    base, _ = server

    def stop():
        raise runtime.Interrupted()

    monkeypatch.setattr(runtime.hooks, "check_interrupt", stop)
    with pytest.raises(runtime.Interrupted):
        download_model(_model(), folder, url=f"{base}/good.pth")
    assert _leftovers(folder) == []


def test_choosing_a_known_missing_model_downloads_it(server, _isolated_model_dir, monkeypatch):
    base, good = server
    known = replace(registry.KNOWN_MODELS[0], url=f"{base}/good.pth")
    monkeypatch.setattr(registry, "KNOWN_MODELS", (known,))
    path = registry.resolve_model_path(known.file_name)
    assert path == _isolated_model_dir / known.file_name and path.read_bytes() == good
    assert download.verify_checkpoint_file(path) is None
