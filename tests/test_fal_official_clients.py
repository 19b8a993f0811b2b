"""fal's own clients against ``python -m samkit serve``: the seeds' calls, unchanged but for the host.

The server runs the trained fixtures (tests/testmodels/, given as relative paths) on 127.0.0.1
behind a TLS front this test makes (a reverse proxy adding X-Forwarded-Proto/Host, the server told
to trust it), because both clients speak only https. Images come as https URLs from a loopback
host on the server's --fetch-host allow-list, which also receives the webhooks.

* fal-client (PyPI, pinned in tests/requirements.txt) in a subprocess with FAL_QUEUE_RUN_HOST,
  FAL_RUN_HOST and SSL_CERT_FILE set: tests/testsupport/fal_client_seeds.py.
* @fal-ai/client (npm, pinned by tests/js/falclient/package-lock.json) under Node with a
  requestMiddleware rewriting fal's hosts: tests/js/falclient/seeds.mjs. Skipped where Node or
  the installed package is missing (tests/run.sh runs ``npm ci`` there when npm exists).
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from testmodels.shapes import HELDOUT_SEEDS, make_scene
from testsupport.fal_server import SERVER_KEY, wait_until
from testsupport.tls_loopback import image_and_webhook_site, make_certificates, tls_front

ROOT = Path(__file__).resolve().parents[1]
JS_DIR = ROOT / "tests" / "js" / "falclient"
SEG, TINY = "fal-ai/image-preprocessors/sam", "fal-ai/tiny-sam"

pytest.importorskip("fal_client", reason="fal-client is not installed (pip install -r tests/requirements.txt)")


def _scene():
    scene = make_scene(HELDOUT_SEEDS[7], 96, 128)
    ys, xs = np.nonzero(scene.masks[0])
    inside = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))  # the object pixel nearest its centre
    buf = io.BytesIO()
    Image.fromarray(scene.image).save(buf, format="PNG")
    return buf.getvalue(), [int(xs[inside]), int(ys[inside])]


def _start_server(tmp: Path, ca: Path) -> tuple[subprocess.Popen, str, list]:
    (tmp / "keys.txt").write_text(f"{SERVER_KEY}\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "YOLO_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost",
           "SAMKIT_MODELS_DIR": str(tmp / "models"), "SSL_CERT_FILE": str(ca),
           "YOLO_CONFIG_DIR": os.environ.get("YOLO_CONFIG_DIR", str(tmp / "yolo"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "samkit", "serve", "--tiny-sam-model", "tests/testmodels/fastsam_shapes.pt",
         "--segmap-model", "tests/testmodels/sam_shapes.pth", "--device", "cpu", "--port", "0",
         "--key-file", str(tmp / "keys.txt"), "--points-per-side", "8", "--trusted-proxy", "127.0.0.1",
         "--fetch-host", "127.0.0.1", "--webhook-host", "127.0.0.1", "--allow-private-addresses",
         "--webhook-retries", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    output: list = []
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    end = time.monotonic() + 180
    while time.monotonic() < end and proc.poll() is None:
        try:
            output.append(lines.get(timeout=0.5))
        except queue.Empty:
            continue
        found = re.search(r"serving .* at (http://127\.0\.0\.1:\d+)", output[-1])
        if found:
            threading.Thread(target=lambda: [output.append(line) for line in iter(lines.get, None)], daemon=True).start()
            return proc, found.group(1), output
    proc.kill()
    raise AssertionError("the server did not start:\n" + "".join(output))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interop")
    certs = make_certificates(tmp)
    png, point = _scene()
    (tmp / "scene.bin").write_bytes(png)  # no image extension: encode_file labels it application/octet-stream
    proc, backend, output = _start_server(tmp, certs.ca)
    try:
        with image_and_webhook_site(png, certs) as (site, recorded), tls_front(backend, certs) as (front, seen):
            yield dict(certs=certs, png=png, point=point, site=site, recorded=recorded, front=front, tmp=tmp,
                       output=output, seen=seen)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert SERVER_KEY.split(":")[1] not in "".join(output)  # the key never reaches the log


def _check_image(image: dict, stack: dict) -> None:
    """A result image as fal gives it: an https URL on the front (not the server's own http one)."""
    assert image["url"].startswith(stack["front"] + "/files/"), image
    assert (image["width"], image["height"], image["content_type"]) == (128, 96, "image/png")
    png = httpx.get(image["url"], verify=ssl.create_default_context(cafile=str(stack["certs"].ca)), trust_env=False)
    assert png.status_code == 200 and len(png.content) == image["file_size"]
    assert Image.open(io.BytesIO(png.content)).size == (128, 96)


def _webhook_for(stack: dict, request_id: str) -> dict:
    wait_until(lambda: any(w["request_id"] == request_id for w in stack["recorded"].webhooks), timeout=60,
               what="the webhook")
    return next(w for w in stack["recorded"].webhooks if w["request_id"] == request_id)


def test_fal_client_runs_the_seeds_calls(stack):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FAL_KEY": SERVER_KEY,
           "FAL_QUEUE_RUN_HOST": stack["front"].removeprefix("https://"),
           "FAL_RUN_HOST": stack["front"].removeprefix("https://") + "/run",  # fal.run's sync API is at /run/
           "SSL_CERT_FILE": str(stack["certs"].ca), "NO_PROXY": "127.0.0.1", "HOME": str(stack["tmp"]),
           "SEED_IMAGE_URL": stack["site"] + "/cat.png", "SEED_WEBHOOK_URL": stack["site"] + "/hook",
           "SEED_OCTET_FILE": str(stack["tmp"] / "scene.bin"), "SEED_POINT": json.dumps(stack["point"])}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "testsupport" / "fal_client_seeds.py")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:] + "".join(stack["output"])[-3000:]
    out = json.loads(done.stdout)
    _check_image(out["subscribe"]["image"], stack)
    running = [u for u in out["subscribe_updates"] if u["status"] == "IN_PROGRESS"]
    assert any("fetching image_url from 127.0.0.1" in m for u in running for m in u["logs"]), out["subscribe_updates"]
    assert out["subscribe_updates"][-1]["status"] == "Completed"
    assert out["status"]["type"] == "Completed" and out["status"]["error"] is None and out["status"]["logs"]
    _check_image(out["result"]["image"], stack)
    _check_image(out["run"]["image"], stack)  # the result itself, not a queue receipt
    assert "request_id" not in out["run"] and f"POST /run/{TINY}" in stack["seen"]
    assert out["cancelled"]["status_code"] == 400 and "cancelled" in out["cancelled"]["message"]
    _check_image(out["after_cancel"]["image"], stack)
    assert out["foreign_host"]["status_code"] == 422 and "--fetch-host" in out["foreign_host"]["message"]
    hook = _webhook_for(stack, out["submitted_id"])
    assert hook["status"] == "OK" and hook["gateway_request_id"] == out["submitted_id"]
    assert hook["payload"] == out["result"]


def test_fal_js_client_runs_the_seeds_calls(stack):
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node is not installed: the @fal-ai/client checks need node (and npm ci in tests/js/falclient)")
    if not (JS_DIR / "node_modules" / "@fal-ai" / "client").is_dir():
        pytest.skip("@fal-ai/client is not installed: run `npm ci` in tests/js/falclient (tests/run.sh does this "
                    "when npm exists)")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FAL_KEY": SERVER_KEY,
           "NODE_EXTRA_CA_CERTS": str(stack["certs"].ca), "SEED_BASE_URL": stack["front"],
           "SEED_IMAGE_URL": stack["site"] + "/cat.png", "SEED_WEBHOOK_URL": stack["site"] + "/hook",
           "SEED_POINT": json.dumps(stack["point"]), "NO_PROXY": "127.0.0.1"}
    done = subprocess.run([node, "seeds.mjs"], cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:] + "".join(stack["output"])[-3000:]
    out = json.loads(done.stdout)
    _check_image(out["subscribe"]["data"]["image"], stack)
    assert out["subscribe"]["updates"][-1]["status"] == "COMPLETED"
    assert any(u["status"] == "IN_PROGRESS" and u["logs"] for u in out["subscribe"]["updates"])
    # streaming mode: the SSE stream ends with COMPLETED and the logs arrive once each
    streamed = out["streaming"]["updates"]
    assert streamed[-1]["status"] == "COMPLETED"
    final_logs = streamed[-1]["logs"]
    assert final_logs and len(final_logs) == len(set(final_logs)), streamed
    streams = [s for s in stack["seen"] if s.endswith("/status/stream")]
    assert any(out["streaming"]["requestId"] in s for s in streams), stack["seen"]
    _check_image(out["streaming"]["data"]["image"], stack)
    assert out["queue"]["status"] == "COMPLETED" and out["queue"]["logs"]
    assert out["queue"]["requestId"] == out["queue"]["request_id"]
    _check_image(out["queue"]["data"]["image"], stack)
    hook = _webhook_for(stack, out["queue"]["request_id"])
    assert hook["status"] == "OK" and hook["payload"] == out["queue"]["data"]
    _check_image(out["run"]["data"]["image"], stack)
    assert out["cancelled"]["status"] == 400 and out["cancelled"]["statusAfter"] == "COMPLETED"
    assert out["first"] == {"status": "COMPLETED", "error": None}
