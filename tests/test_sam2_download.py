"""The SAM 2.1 catalogue entries: a download passes only if its contents are that SAM 2.1 size
(a real HTTP server on 127.0.0.1 serves checkpoints of the real hiera-tiny architecture)."""

import http.server
import threading
from dataclasses import replace

import pytest

from comfyui_sam_kit.samkit import catalogue
from comfyui_sam_kit.samkit.download import DownloadError, download_model
from testsupport.sam2_checkpoints import save_sam2_checkpoint, tiny_state_dict


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sam2files")
    files = {f"/{v}.pt": save_sam2_checkpoint(tiny_state_dict(seed=1, version=v, spread=False), tmp / v / "f.pt").read_bytes()
             for v in ("2.1", "2.0")}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    httpd.shutdown()


def test_the_four_official_files_are_listed():
    names = {m.file_name: m for m in catalogue.KNOWN_MODELS if m.family == "sam2"}
    assert sorted(names) == ["sam2.1_hiera_base_plus.pt", "sam2.1_hiera_large.pt", "sam2.1_hiera_small.pt",
                             "sam2.1_hiera_tiny.pt"]
    for name, model in names.items():
        assert model.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{name}"
        assert model.licence == "Apache-2.0"


def test_tiny_entry_takes_a_sam21_tiny_and_refuses_other_versions_and_sizes(server, tmp_path):
    base, files = server
    tiny = catalogue.known_model("sam2.1_hiera_tiny.pt")
    path = download_model(tiny, tmp_path / "a", url=f"{base}/2.1.pt")
    assert path.name == "sam2.1_hiera_tiny.pt" and path.read_bytes() == files["/2.1.pt"]
    with pytest.raises(DownloadError, match="architecture check: the catalogue lists a SAM 2 sam2.1_hiera_t checkpoint, "
                                            "but its contents are a SAM 2 sam2_hiera_t checkpoint"):
        download_model(tiny, tmp_path / "b", url=f"{base}/2.0.pt")
    small = catalogue.known_model("sam2.1_hiera_small.pt")
    with pytest.raises(DownloadError, match="lists a SAM 2 sam2.1_hiera_s checkpoint, but its contents are a SAM 2 "
                                            "sam2.1_hiera_t"):
        download_model(small, tmp_path / "c", url=f"{base}/2.1.pt")
    assert not any((tmp_path / "b").iterdir()) and not any((tmp_path / "c").iterdir())
    with pytest.raises(ValueError, match="arch 'vit_b' is not one of family 'sam2'"):
        replace(tiny, arch="vit_b")
