"""Downloads through a real HTTP server on 127.0.0.1: all or nothing, and only the file the
catalogue lists (size, git blob id, sha256, format, architecture: samkit/download.py's checks).

The served files are checkpoints of the real architectures (testsupport.checkpoints): MobileSAM's
(vit_t) as the good ``mobile_sam.pt``, a small custom ViT SAM and a FastSAM as wrong ones. Test
catalogue entries take their size from the bytes and their git blob id from ``git hash-object``
itself, so a download that passes proves the streamed blob id is git's.
"""

import hashlib
import http.server
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import replace

import pytest

from comfyui_sam_kit.samkit import catalogue, download, model_source, runtime
from comfyui_sam_kit.samkit.catalogue import KnownModel
from comfyui_sam_kit.samkit.download import DownloadError, download_model
from testsupport.bad_models import MEMBERS
from testsupport.checkpoints import build_small_sam, build_vit_t_sam, save_fastsam_checkpoint, save_sam_checkpoint


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
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading (interrupt tests)
            pass

    def log_message(self, *args):
        pass


def _git_blob_id(data: bytes) -> str:
    """The object id git gives these bytes (the reference, not a re-implementation)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    return subprocess.run(["git", "hash-object", "--stdin"], input=data, capture_output=True, check=True,
                          timeout=60).stdout.decode().strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    files = {
        "good": save_sam_checkpoint(build_vit_t_sam(seed=0), tmp / "0" / "mobile_sam.pt").read_bytes(),
        # same architecture and file name (torch.save names the archive's folder after it), so the
        # same size; other weights: only a checksum tells them apart
        "other_weights": save_sam_checkpoint(build_vit_t_sam(seed=1), tmp / "1" / "mobile_sam.pt").read_bytes(),
        "small_sam": save_sam_checkpoint(build_small_sam(), tmp / "small.pth").read_bytes(),
        "fastsam": save_fastsam_checkpoint(tmp / "fastsam.pt").read_bytes(),
    }
    assert len(files["other_weights"]) == len(files["good"]) and files["other_weights"] != files["good"]
    good = files["good"]
    _Handler.routes = {f"/{name}.pt": (body, len(body)) for name, body in files.items()}
    _Handler.routes.update({
        "/cut.pt": (good[: len(good) // 3], len(good)),  # the connection drops early
        "/html.pt": (b"<html>Not a checkpoint</html>", 29),
    })
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    httpd.shutdown()


def _entry(body: bytes | None = None, name: str = "mobile_sam.pt", **changes) -> KnownModel:
    """The catalogue's entry ``name``, listing ``body``'s exact size and git blob id (none if no
    body: like the catalogue's TinySAM and FastSAM entries) and no sha256 unless given."""
    pinned = {"size_bytes": None, "git_blob_sha1": None}
    if body is not None:
        pinned = {"size_bytes": len(body), "git_blob_sha1": _git_blob_id(body)}
    return replace(catalogue.known_model(name), **{"sha256": None, **pinned, **changes})


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "downloads"


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_download_passing_every_check_lands_atomically_with_progress(server, folder, monkeypatch):
    base, files = server
    good = files["good"]
    seen = []

    class Recorder(runtime.Progress):
        def set(self, value):
            super().set(value)
            seen.append((self.value, self.total))

    monkeypatch.setattr(runtime.hooks, "progress", lambda total, label="": Recorder(total, label))
    # every check the catalogue can ask for: size, git blob id, sha256, format, architecture (vit_t)
    model = _entry(good, sha256=hashlib.sha256(good).hexdigest())
    path = download_model(model, folder, url=f"{base}/good.pt")
    assert path.read_bytes() == good
    assert _leftovers(folder) == ["mobile_sam.pt"]
    assert seen[-1] == (len(good), len(good))


@pytest.mark.parametrize(
    "route,sha,match",
    [
        ("/missing.pt", None, "HTTP 404"),
        ("/cut.pt", None, "cut short"),
        ("/html.pt", None, "not a PyTorch checkpoint"),
        ("/good.pt", "0" * 64, "checksum mismatch"),
    ],
)
def test_failed_downloads_leave_nothing_behind(server, folder, route, sha, match):
    base, _ = server
    with pytest.raises(DownloadError, match=match) as info:
        download_model(_entry(name="tinysam_42.3.pth", sha256=sha), folder, url=f"{base}{route}")
    assert "put it in" in str(info.value) and str(folder) in str(info.value)
    assert f"{base}{route}" in str(info.value)
    assert _leftovers(folder) == []


# (catalogue entry: name, file whose size/blob id it lists or None, sha256 of; route served; check; words)
CHECKS = {
    "wrong size": ("mobile_sam.pt", "good", None, "small_sam", "size",
                   "bytes, the catalogue lists"),
    "wrong git blob id": ("mobile_sam.pt", "good", None, "other_weights", "git blob id",
                          "checksum mismatch: expected "),
    "wrong sha256": ("tinysam_42.3.pth", None, "good", "other_weights", "sha256",
                     "checksum mismatch: expected "),
    "FastSAM served as mobile_sam.pt": ("mobile_sam.pt", "fastsam", None, "fastsam", "architecture",
                                        "lists a SAM vit_t checkpoint, but its contents are an ultralytics checkpoint"),
    "custom ViT SAM served as mobile_sam.pt": ("mobile_sam.pt", "small_sam", None, "small_sam", "architecture",
                                               "lists a SAM vit_t checkpoint, but its contents are a SAM vit_custom"),
    "MobileSAM served as FastSAM-s.pt": ("FastSAM-s.pt", None, None, "good", "architecture",
                                         "lists a FastSAM checkpoint (ultralytics YOLO-seg), but its contents are "
                                         "a SAM vit_t checkpoint"),
}


@pytest.mark.parametrize("case", CHECKS)
def test_each_check_refuses_the_wrong_file_naming_file_check_url_and_what_to_do(server, folder, case):
    base, files = server
    name, pinned, sha_of, route, check, words = CHECKS[case]
    sha = hashlib.sha256(files[sha_of]).hexdigest() if sha_of else None
    model = _entry(files[pinned] if pinned else None, name=name, sha256=sha)
    url = f"{base}/{route}.pt"
    with pytest.raises(DownloadError) as info:
        download_model(model, folder, url=url)
    message = str(info.value)
    assert f"downloaded {name} from {url} failed the {check} check: " in message, message
    assert words in message, message
    assert f"put it in {folder}" in message, message  # what to do, and where
    assert _leftovers(folder) == []


def test_fastsam_entry_refuses_an_ultralytics_model_of_another_task(server, folder, tmp_path):
    # a YOLO detection model is an ultralytics file too: ultralytics itself must load it as -seg
    base, _ = server
    MEMBERS["ultralytics detection model"][0](tmp_path / "det.pt")
    body = (tmp_path / "det.pt").read_bytes()
    _Handler.routes["/det.pt"] = (body, len(body))
    with pytest.raises(DownloadError, match="failed the architecture check: .*ultralytics detect model") as info:
        download_model(_entry(name="FastSAM-s.pt"), folder, url=f"{base}/det.pt")
    assert "FastSAM-s.pt" in str(info.value) and f"put it in {folder}" in str(info.value)
    assert _leftovers(folder) == []


def test_the_fastsam_entry_takes_a_fastsam_file(server, folder):
    base, files = server
    path = download_model(_entry(name="FastSAM-s.pt"), folder, url=f"{base}/fastsam.pt")
    assert path.read_bytes() == files["fastsam"] and _leftovers(folder) == ["FastSAM-s.pt"]


@pytest.mark.parametrize("member", MEMBERS)
def test_no_unusable_file_gets_in_under_a_catalogue_name(server, folder, tmp_path, member):
    # every kind of unusable file the loader refuses, served where TinySAM (no size or checksum
    # published) should be: the format or the architecture check refuses it, cleanly
    base, _ = server
    write, _kind, words = MEMBERS[member]
    write(tmp_path / "served.bin")
    body = (tmp_path / "served.bin").read_bytes()
    _Handler.routes["/member.bin"] = (body, len(body))
    url = f"{base}/member.bin"
    with pytest.raises(DownloadError) as info:
        download_model(_entry(name="tinysam_42.3.pth"), folder, url=url)
    message = str(info.value)
    assert any(f"tinysam_42.3.pth from {url} failed the {c} check" in message for c in ("format", "architecture"))
    if "architecture check" in message:  # what the file is, in the loader's words, under the real name
        if member == "ultralytics detection model":  # a SAM entry: any ultralytics file is the wrong family
            words = "its contents are an ultralytics checkpoint"
        assert words in message and ".part" not in message, message
    assert f"put it in {folder}" in message and _leftovers(folder) == []


def test_unreachable_host_fails_within_seconds_naming_file_folder_and_url(folder):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mobile_sam.pt"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_model(_entry(name="mobile_sam.pt"), folder, url=url)
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
        download_model(_entry(name="tinysam_42.3.pth"), folder, url=f"{base}/good.pt")
    assert _leftovers(folder) == []


def test_choosing_a_known_missing_model_downloads_it(server, _isolated_model_dir, monkeypatch):
    base, files = server
    known = _entry(files["good"], url=f"{base}/good.pt")
    monkeypatch.setattr(catalogue, "KNOWN_MODELS", (known,))
    path = model_source.resolve_model_path(known.file_name)
    assert path == _isolated_model_dir / known.file_name and path.read_bytes() == files["good"]
    assert download.verify_checkpoint_file(path) is None


def test_catalogue_entries_are_consistent():
    # KnownModel refuses entries whose checks could not be real
    mobile = catalogue.known_model("mobile_sam.pt")
    assert mobile.size_bytes and mobile.git_blob_sha1  # pinned to a commit: both are published
    with pytest.raises(ValueError, match="git blob id is computed over the size too"):
        replace(mobile, size_bytes=None)
    with pytest.raises(ValueError, match="arch 'fastsam' is not one of family 'sam'"):
        replace(mobile, arch="fastsam")
