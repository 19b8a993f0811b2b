"""The self-hosted fal-compatible server (samkit.fal.server and what it runs on): queue, keys, errors, files, CLI.

Raw HTTP with httpx against the server on 127.0.0.1, so these tests see exactly what any fal
client would see; the last tests start it the way users do, ``python -m samkit serve``.
"""

import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_sam_kit.samkit import runtime
from comfyui_sam_kit.samkit.fal import schemas
from comfyui_sam_kit.samkit.fal.remote import encode_input_png
from testsupport.checkpoints import save_sam_checkpoint
from testsupport.fal_server import SERVER_KEY, serve, small_model, wait_until

ROOT = Path(__file__).resolve().parents[1]
AUTH = {"Authorization": f"Key {SERVER_KEY}"}


def _data_uri(h=32, w=48, seed=0):
    image = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(seed))
    return schemas.png_data_uri(encode_input_png(image)[0])


def _http(base):
    return httpx.Client(base_url=base, headers=AUTH, timeout=10, trust_env=False)


def _submit(http, endpoint=schemas.SEGMENTATION_MAP, **arguments):
    arguments.setdefault("image_url", _data_uri())
    return http.post(f"/{endpoint}", json=arguments)


def _finish(http, status_url, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        body = http.get(status_url, params={"logs": "1"}).json()
        if body["status"] == "COMPLETED":
            return body
        time.sleep(0.05)
    raise AssertionError("the job did not complete")


def _gated_handler(started: threading.Event, release: threading.Event):
    """A job that logs, then waits for ``release`` while checking for cancellation like library code does."""
    def handle(arguments, ctx):
        ctx.log("warming up")
        started.set()
        while not release.wait(0.02):
            runtime.check_interrupt()  # the server's job hooks turn a cancel into Interrupted here
        return ctx.image()[0]

    return handle


# ---------------------------------------------------------------- the protocol, as fal answers it


def test_submit_status_result_and_file_have_fals_shapes():
    with serve() as (_server, base, _f), _http(base) as http:
        submitted = _submit(http)
        assert submitted.status_code == 200
        body = submitted.json()
        rid = body["request_id"]
        assert body["status"] == "IN_QUEUE" and body["queue_position"] == 0
        assert body["status_url"] == f"{base}/fal-ai/image-preprocessors/requests/{rid}/status"
        assert body["response_url"] == f"{base}/fal-ai/image-preprocessors/requests/{rid}"
        assert body["cancel_url"] == f"{base}/fal-ai/image-preprocessors/requests/{rid}/cancel"
        done = _finish(http, body["status_url"])
        assert done["error"] is None and done["metrics"]["inference_time"] >= 0
        assert any("segment" in entry["message"] for entry in done["logs"])
        result = http.get(body["response_url"])
        assert result.status_code == 200 and result.headers["x-fal-request-id"] == rid
        image = result.json()["image"]
        assert (image["width"], image["height"], image["content_type"]) == (48, 32, "image/png")
        png = httpx.get(image["url"], trust_env=False)  # public: no key needed
        assert png.status_code == 200 and len(png.content) == image["file_size"]
        # a client that sends its key to the file host is told so, loudly
        assert httpx.get(image["url"], headers=AUTH, trust_env=False).status_code == 400


def test_keys_are_checked_on_every_queue_call():
    with serve() as (_server, base, _f), _http(base) as http:
        rid = _submit(http).json()["request_id"]
        # bytes that are not UTF-8 (a garbled or hostile header) are a wrong key too, not a 500
        for headers in ({}, {"Authorization": "Key nope:nope"}, {"Authorization": f"Bearer {SERVER_KEY}"},
                        {"Authorization": b"Key \xff\xfe"}):
            for method, path in (("POST", f"/{schemas.TINY_SAM}"), ("GET", f"/fal-ai/image-preprocessors/requests/{rid}/status"),
                                 ("GET", f"/fal-ai/image-preprocessors/requests/{rid}"),
                                 ("PUT", f"/fal-ai/image-preprocessors/requests/{rid}/cancel")):
                answer = httpx.request(method, base + path, headers=headers, json={}, trust_env=False)
                assert answer.status_code == 401 and "Authorization: Key" in answer.json()["detail"]
    with serve(keys=()) as (_server, base, _f):  # --no-require-key
        assert httpx.post(f"{base}/{schemas.SEGMENTATION_MAP}", json={"image_url": _data_uri()},
                          trust_env=False).status_code == 200


@pytest.mark.parametrize("endpoint,arguments,loc,kind", [
    (schemas.TINY_SAM, {"image_url": None}, ["body", "image_url"], "string_type"),
    (schemas.TINY_SAM, {"size": 10}, ["body", "size"], "value_error"),
    (schemas.TINY_SAM, {"confidence": "high"}, ["body", "confidence"], "float_type"),
    (schemas.TINY_SAM, {"box_prompt": [[1, 2, 3]]}, ["body", "box_prompt", 0], "value_error"),
    (schemas.TINY_SAM, {"point_prompt": [[1, 2]], "point_label": [2]}, ["body", "point_label", 0], "value_error"),
    (schemas.TINY_SAM, {"point_prompt": [[1, 2], [3, 4]], "point_label": [1]}, ["body", "point_label"], "value_error"),
    (schemas.SEGMENTATION_MAP, {"point_prompt": [[1, 2]]}, ["body", "point_prompt"], "extra_forbidden"),
    (schemas.SEGMENTATION_MAP, {"image_url": "https://example.com/cat.png"}, ["body", "image_url"], "value_error"),
    (schemas.SEGMENTATION_MAP, {"image_url": "http://example.com/cat.png"}, ["body", "image_url"], "value_error"),
])
def test_bad_inputs_get_fals_422_at_submit(endpoint, arguments, loc, kind):
    with serve() as (server, base, _f), _http(base) as http:
        answer = _submit(http, endpoint, **arguments)
        assert answer.status_code == 422
        errors = answer.json()["detail"]
        assert any(e["loc"] == loc and e["type"] == kind and e["msg"] for e in errors), errors
        assert not server.jobs
        missing = http.post(f"/{endpoint}", json={})
        assert missing.status_code == 422 and missing.json()["detail"][0]["type"] == "missing"
        assert http.post(f"/{endpoint}", content=b"{not json").status_code == 422


def test_an_image_that_does_not_decode_is_a_422_at_result():
    with serve() as (_server, base, _f), _http(base) as http:
        body = _submit(http, image_url="data:image/png;base64," + "QUJD" * 50).json()
        done = _finish(http, body["status_url"])
        assert done["error_type"] == "validation_error"
        result = http.get(body["response_url"])
        assert result.status_code == 422
        assert result.json()["detail"][0]["loc"] == ["body", "image_url"]
        assert "Could not load image" in result.json()["detail"][0]["msg"]


def test_unknown_app_and_request_are_404():
    with serve() as (_server, base, _f), _http(base) as http:
        assert http.post("/fal-ai/flux/dev", json={"image_url": _data_uri()}).status_code == 404
        assert http.get("/fal-ai/tiny-sam/requests/nope/status").status_code == 404
        assert http.put("/fal-ai/tiny-sam/requests/nope/cancel").json() == {"status": "NOT_FOUND"}
        rid = _submit(http).json()["request_id"]
        # a request lives under its own owner/app only
        assert http.get(f"/fal-ai/tiny-sam/requests/{rid}/status").status_code == 404


# ---------------------------------------------------------------- the queue


def test_queue_positions_cancel_and_workers():
    started, release = threading.Event(), threading.Event()
    handlers = {schemas.SEGMENTATION_MAP: _gated_handler(started, release)}
    with serve(handlers, workers=1) as (server, base, faults), _http(base) as http:
        server.pause()
        jobs = [_submit(http).json() for _ in range(3)]
        assert [j["queue_position"] for j in jobs] == [0, 1, 2]
        assert [http.get(j["status_url"]).json()["queue_position"] for j in jobs] == [0, 1, 2]
        # cancelling a queued job removes it: the ones behind move up
        cancelled = http.put(jobs[1]["cancel_url"])
        assert cancelled.status_code == 202 and cancelled.json() == {"status": "CANCELLATION_REQUESTED"}
        assert http.get(jobs[2]["status_url"]).json()["queue_position"] == 1
        assert http.get(jobs[1]["status_url"]).json()["error_type"] == "request_cancelled"
        assert http.get(jobs[1]["response_url"]).status_code == 400
        server.resume()
        wait_until(started.is_set, what="the first job to start")
        running = http.get(jobs[0]["status_url"], params={"logs": "1"})
        assert running.status_code == 202 and running.json()["status"] == "IN_PROGRESS"
        assert [e["message"] for e in running.json()["logs"]][-1] == "warming up"
        assert http.get(jobs[2]["status_url"]).json()["queue_position"] == 0  # one worker: still waiting
        # cancelling a running job: the library's next check_interrupt stops it
        assert http.put(jobs[0]["cancel_url"]).status_code == 202
        assert _finish(http, jobs[0]["status_url"])["error_type"] == "request_cancelled"
        release.set()
        assert _finish(http, jobs[2]["status_url"])["error"] is None
        assert http.get(jobs[2]["response_url"]).status_code == 200
        assert http.put(jobs[2]["cancel_url"]).json() == {"status": "ALREADY_COMPLETED"}


def test_n_workers_run_n_jobs_at_once():
    gates = [threading.Event() for _ in range(3)]
    release = threading.Event()
    seen = []

    def handle(arguments, ctx):
        seen.append(ctx.request_id)
        gates[len(seen) - 1].set()
        release.wait(10)
        return ctx.image()[0]

    with serve({schemas.SEGMENTATION_MAP: handle}, workers=2) as (_server, base, _f), _http(base) as http:
        jobs = [_submit(http).json() for _ in range(3)]
        wait_until(lambda: gates[0].is_set() and gates[1].is_set(), what="two jobs running")
        states = [http.get(j["status_url"]).json() for j in jobs]
        assert [s["status"] for s in states] == ["IN_PROGRESS", "IN_PROGRESS", "IN_QUEUE"]
        release.set()
        assert all(_finish(http, j["status_url"])["error"] is None for j in jobs)


def test_results_expire_after_the_ttl():
    with serve(result_ttl=0.3) as (server, base, _f), _http(base) as http:
        body = _submit(http).json()
        _finish(http, body["status_url"])
        url = http.get(body["response_url"]).json()["image"]["url"]
        wait_until(lambda: not server.jobs and not server.files, timeout=5, what="the result to expire")
        assert http.get(body["response_url"]).status_code == 404
        assert httpx.get(url, trust_env=False).status_code == 404


def test_request_timeout_header_drops_a_job_that_did_not_start_in_time():
    with serve() as (server, base, _f), _http(base) as http:
        server.pause()
        body = http.post(f"/{schemas.SEGMENTATION_MAP}", json={"image_url": _data_uri()},
                         headers={"X-Fal-Request-Timeout": "0.2"}).json()
        time.sleep(0.4)
        server.resume()
        assert _finish(http, body["status_url"])["error_type"] == "request_timeout"
        result = http.get(body["response_url"])
        assert result.status_code == 504 and result.headers["x-fal-request-timeout-type"] == "user"


def test_tiny_sam_runs_the_local_code():
    from comfyui_sam_kit.samkit.tiny_sam_job import TinySamRequest, segment_with_prompts

    image = torch.rand(1, 40, 60, 3, generator=torch.Generator().manual_seed(3))
    png, pixels = encode_input_png(image[0])
    with serve() as (_server, base, _f), _http(base) as http:
        body = _submit(http, schemas.TINY_SAM, image_url=schemas.png_data_uri(png), point_prompt=[[20, 15]],
                       point_label=[1], confidence=0.0).json()
        _finish(http, body["status_url"])
        url = http.get(body["response_url"]).json()["image"]["url"]
        served = httpx.get(url, trust_env=False).content
    from comfyui_sam_kit.samkit.images import from_uint8_rgb

    local = segment_with_prompts(small_model(), from_uint8_rgb(pixels),
                                 TinySamRequest(confidence=0.0, point_prompt=[[20, 15]], point_label=[1]))
    assert local.counts == [1]
    expected = (local.image[0].clamp(0, 1) * 255).round().to(torch.uint8)
    assert torch.equal(torch.from_numpy(np.array(Image.open(io.BytesIO(served)).convert("RGB"))), expected)
    assert not torch.equal(expected, torch.from_numpy(pixels))  # the object is painted


# ---------------------------------------------------------------- python -m samkit serve


def _serve_cli(*args, env_dir):
    env = {"SAMKIT_MODELS_DIR": str(env_dir), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "YOLO_OFFLINE": "1",
           "NO_PROXY": "127.0.0.1,localhost"}
    return subprocess.Popen([sys.executable, "-m", "samkit", "serve", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_cli_refuses_to_start_without_keys_or_model(tmp_path, capsys, monkeypatch):
    from comfyui_sam_kit.samkit.fal.cli import main

    monkeypatch.setattr(runtime.hooks, "progress", runtime.hooks.progress)  # main() installs a terminal bar

    assert main(["--model", "x.pth"]) == 2
    assert "give --key-file" in capsys.readouterr().err
    assert main(["--no-require-key"]) == 2
    assert "give --model" in capsys.readouterr().err
    (tmp_path / "keys.txt").write_text("# nothing\n")
    assert main(["--model", "x.pth", "--key-file", str(tmp_path / "keys.txt")]) == 2
    assert "lists no keys" in capsys.readouterr().err
    assert main(["--model", "nope.pth", "--no-require-key", "--device", "cpu"]) == 2
    assert "nope.pth" in capsys.readouterr().err


@pytest.mark.parametrize("option,value", [("--fetch-host", "https://example.com/x"), ("--fetch-host", "10.0.0.0/8"),
                                          ("--fetch-host", "*"), ("--webhook-host", ""), ("--webhook-host", "a b"),
                                          ("--fetch-timeout", "nan"), ("--fetch-max-mb", "inf"), ("--result-ttl", "nan"),
                                          ("--port", "99999")])
def test_cli_refuses_options_that_could_never_work_naming_them(option, value, capsys, monkeypatch):
    # each of these used to start a server that refused every fetch / webhook (a host that can never
    # match a URL's host), waited forever (NaN seconds), or died with a raw OverflowError (the port)
    from comfyui_sam_kit.samkit.fal.cli import main

    monkeypatch.setattr(runtime.hooks, "progress", runtime.hooks.progress)  # main() installs a terminal bar
    assert main(["--model", "x.pth", "--no-require-key", option, value]) == 2
    assert option in capsys.readouterr().err


def test_cli_serves_a_model_file_until_terminated(tmp_path, _isolated_model_dir, monkeypatch):
    from comfyui_sam_kit.samkit.fal import remote

    save_sam_checkpoint(small_model().module, _isolated_model_dir / "small.pth")
    (tmp_path / "keys.txt").write_text(f"# studio keys\n{SERVER_KEY}\n")
    proc = _serve_cli("--model", "small.pth", "--device", "cpu", "--port", "0", "--key-file", str(tmp_path / "keys.txt"),
                      "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                      env_dir=_isolated_model_dir)
    lines: "queue.Queue[str]" = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    output = []
    try:
        found, end = None, time.monotonic() + 120
        while found is None and time.monotonic() < end and proc.poll() is None:
            try:
                output.append(lines.get(timeout=0.5))
            except queue.Empty:
                continue
            found = re.search(r"serving (.*) at (http://127\.0\.0\.1:\d+)", output[-1])
        assert found, "".join(output)
        assert found.group(1) == "fal-ai/image-preprocessors/sam, fal-ai/tiny-sam"
        monkeypatch.setenv("SAMKIT_FAL_BASE_URL", found.group(2))
        monkeypatch.setenv("FAL_KEY", SERVER_KEY)
        image = torch.rand(1, 30, 40, 3, generator=torch.Generator().manual_seed(1))
        result = remote.segmentation_map(image, timeout=60)
        assert result.seg_map.shape == (1, 30, 40, 3) and result.coverage.any()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=5)
    while not lines.empty():
        output.append(lines.get())
    text = "".join(output)
    assert proc.returncode == 0, text
    assert "stopping" in text and "test-secret-0123456789" not in text
