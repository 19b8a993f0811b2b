"""The fal queue client (samkit.fal.client, .calls, .downloads) against the pack's real server on 127.0.0.1.

Every test talks real HTTP to a real FalServer running the real handlers with a tiny model;
faults are injected in front of it (testsupport.fal_server.Faults) where the server itself
would never produce them (a locked account, a gateway error, a hostile answer).
"""

import logging

import httpx
import pytest
import torch

from comfyui_sam_kit.samkit.fal import schemas
from comfyui_sam_kit.samkit.fal.keys import FalKey
from comfyui_sam_kit.samkit.fal.client import FalClient
from comfyui_sam_kit.samkit.fal.downloads import ResultDownloader
from comfyui_sam_kit.samkit.fal.errors import (
    FalAccountError,
    FalAuthError,
    FalConfigError,
    FalDownloadError,
    FalRateLimitError,
    FalServerError,
    FalTimeoutError,
    FalValidationError,
    redact,
)
from comfyui_sam_kit.samkit.fal.polling import PollPolicy
from comfyui_sam_kit.samkit.fal.transport import check_base_url
from comfyui_sam_kit.samkit.fal.remote import encode_input_png
from testsupport.fal_server import SERVER_KEY, Faults, recorder, serve, wait_until

KEY = FalKey(SERVER_KEY, "test")
LOCKED = {"detail": "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."}


def _data_uri(h=40, w=56, seed=0):
    image = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(seed))
    return schemas.png_data_uri(encode_input_png(image)[0])


def _client(base, key=KEY, **kw):
    return FalClient(base, key, **kw)


def _segmap_args(**image):
    return schemas.segmentation_map_arguments(_data_uri(**image))


# ---------------------------------------------------------------- the happy path


def test_sub_path_app_submits_with_its_path_and_polls_under_owner_and_app():
    with serve() as (server, base, faults), _client(base) as client, ResultDownloader(allow_loopback_http=True) as dl:
        request_id, output = client.run(schemas.SEGMENTATION_MAP, _segmap_args(), timeout=30)
        ref = schemas.parse_image_output(output)
        png = dl.fetch(ref.url, request_id)
    assert [s.path for s in faults.seen if s.stage == "submit"] == ["/fal-ai/image-preprocessors/sam"]
    polls = [s for s in faults.seen if s.stage == "status"]
    assert polls and all(s.path == f"/fal-ai/image-preprocessors/requests/{request_id}/status" for s in polls)
    assert all(s.query == "logs=1" for s in polls)
    assert [s.path for s in faults.seen if s.stage == "result"] == [f"/fal-ai/image-preprocessors/requests/{request_id}"]
    # the key went with every queue call, and never to the file host
    assert {s.authorization for s in faults.seen if s.stage != "file"} == {f"Key {SERVER_KEY}"}
    assert [s.authorization for s in faults.seen if s.stage == "file"] == [None]
    assert png.startswith(b"\x89PNG") and (ref.width, ref.height) == (56, 40)


# ---------------------------------------------------------------- errors by class


def test_wrong_key_is_an_auth_error_that_names_the_fix_and_not_the_key():
    wrong = FalKey("wrong-id:wrong-secret-value", "environment variable FAL_KEY")
    with serve() as (server, base, faults), _client(base, wrong, auth_hint="Check FAL_KEY.") as client:
        with pytest.raises(FalAuthError) as info:
            client.run(schemas.TINY_SAM, {"image_url": _data_uri()}, timeout=10)
    message = str(info.value)
    assert "HTTP 401" in message and "request not created" in message and "Check FAL_KEY." in message
    assert "wrong-secret-value" not in message and not server.jobs


def test_key_echoed_by_a_server_is_scrubbed_from_the_error():
    def echo(_args):
        return {"detail": f"Invalid Key Authorization header format: 'Key {SERVER_KEY}'"}

    faults = Faults().add("submit", status=401, body=echo)
    with serve(faults=faults) as (_s, base, _f), _client(base) as client:
        with pytest.raises(FalAuthError) as info:
            client.run(schemas.TINY_SAM, {"image_url": _data_uri()}, timeout=10)
    assert "test-secret-0123456789" not in str(info.value) and "[redacted]" in str(info.value)


@pytest.mark.parametrize("stage", ["submit", "result"])
def test_locked_account_is_an_account_error_with_the_request_id(stage):
    faults = Faults().add(stage, status=403, body=LOCKED)
    with serve(faults=faults) as (server, base, _f), _client(base) as client:
        with pytest.raises(FalAccountError) as info:
            client.run(schemas.SEGMENTATION_MAP, _segmap_args(), timeout=30)
    message = str(info.value)
    assert "HTTP 403" in message and "User is locked" in message and "fal.ai/dashboard/billing" in message
    if stage == "submit":
        assert "request not created" in message and info.value.request_id is None
    else:
        (job_id,) = server.jobs
        assert info.value.request_id == job_id and f"request {job_id}" in message


def test_422_at_submit_lists_fields_and_shortens_an_echoed_data_uri():
    image_url = _data_uri(h=120, w=160)

    def fal_style(args):  # fal's toolkit puts the whole input URL in the message
        return {"detail": [{"loc": ["body", "image_url"], "msg": f"Could not load image from url: {args['image_url']}",
                            "type": "value_error"}]}

    faults = Faults().add("submit", status=422, body=fal_style)
    with serve(faults=faults) as (_s, base, _f), _client(base) as client:
        with pytest.raises(FalValidationError) as info:
            client.run(schemas.TINY_SAM, {"image_url": image_url}, timeout=10)
    message = str(info.value)
    assert "image_url: Could not load image from url: data:image/png;base64," in message
    assert image_url not in message and image_url[22:200] not in message and len(message) < 800
    assert info.value.errors[0]["loc"] == ["body", "image_url"]


def test_real_422_at_submit_for_an_input_fal_does_not_have():
    with serve() as (server, base, _f), _client(base) as client:
        with pytest.raises(FalValidationError, match=r"iou: Extra inputs are not permitted"):
            client.run(schemas.TINY_SAM, {"image_url": _data_uri(), "iou": 0.5}, timeout=10)
    assert not server.jobs


def test_real_422_at_result_after_the_job_completed():
    # passes the schema, but the job finds the point outside the 56x40 image
    args = {"image_url": _data_uri(), "point_prompt": [[500, 10]], "point_label": [1]}
    with serve() as (server, base, faults), _client(base) as client:
        with pytest.raises(FalValidationError) as info:
            client.run(schemas.TINY_SAM, args, timeout=30)
    (job_id,) = server.jobs
    assert info.value.request_id == job_id and f"request {job_id}" in str(info.value)
    assert "point_prompt" in str(info.value) and "outside the 56x40 image" in str(info.value)
    assert faults.count("status") >= 1 and server.jobs[job_id].state == "COMPLETED"
    assert faults.count("cancel") == 0  # a finished job needs no cancel


# ---------------------------------------------------------------- retries


def test_429_twice_then_success_creates_one_job():
    faults = Faults().add("submit", status=429, body={"detail": "Too many requests"}, times=2,
                          headers={"Retry-After": "0.1"})
    with serve(faults=faults) as (server, base, _f), _client(base) as client:
        request_id, output = client.run(schemas.SEGMENTATION_MAP, _segmap_args(), timeout=30)
    assert faults.count("submit") == 3 and list(server.jobs) == [request_id]
    assert schemas.parse_image_output(output).url.endswith(".png")


def test_gateway_503_at_submit_is_retried_but_502_is_not():
    nginx = "<html><body><h1>503 Service Temporarily Unavailable</h1><hr>nginx</body></html>"
    faults = Faults().add("submit", status=503, body=nginx)
    with serve(faults=faults) as (server, base, _f), _client(base) as client:
        client.run(schemas.SEGMENTATION_MAP, _segmap_args(), timeout=30)
    assert faults.count("submit") == 2 and len(server.jobs) == 1

    # 502: the gateway may have passed the submit on; sending it again could bill twice
    faults = Faults().add("submit", status=502, body=nginx.replace("503", "502"))
    with serve(faults=faults) as (server, base, _f), _client(base) as client:
        with pytest.raises(FalServerError, match="NOT submitted again"):
            client.run(schemas.SEGMENTATION_MAP, _segmap_args(), timeout=30)
    assert faults.count("submit") == 1


def test_app_503_with_a_request_id_at_submit_is_not_retried():
    faults = Faults().add("submit", status=503, body={"detail": "runner_scheduling_failure",
                                                      "error_type": "runner_scheduling_failure"},
                          headers={"x-fal-request-id": "abc-123"})
    with serve(faults=faults) as (_s, base, _f), _client(base) as client:
        with pytest.raises(FalServerError) as info:
            client.run(schemas.SEGMENTATION_MAP, _segmap_args(), timeout=30)
    assert faults.count("submit") == 1 and info.value.request_id == "abc-123"
    assert "runner_scheduling_failure" in str(info.value)


def test_status_and_result_reads_survive_502_and_503():
    faults = (Faults().add("status", status=502, body="<html>nginx</html>")
              .add("status", status=503, body="<html>nginx</html>")
              .add("result", status=503, body="<html>nginx</html>"))
    with serve(faults=faults) as (server, base, _f), _client(base) as client:
        request_id, output = client.run(schemas.SEGMENTATION_MAP, _segmap_args(), timeout=30)
    assert faults.count("status") >= 3 and faults.count("result") == 2
    assert schemas.parse_image_output(output).url


def test_a_full_queue_answers_429_and_the_client_gives_up_clearly():
    policy = PollPolicy(max_submit_attempts=2)
    with serve(max_queue=1) as (server, base, faults), _client(base, policy=policy) as client:
        server.pause()
        first = client.submit(schemas.SEGMENTATION_MAP, _segmap_args())
        with pytest.raises(FalRateLimitError, match="HTTP 429.*queue is full"):
            client.submit(schemas.SEGMENTATION_MAP, _segmap_args())
        assert faults.count("submit") == 3 and list(server.jobs) == [first.request_id]
        server.resume()


# ---------------------------------------------------------------- deadlines and no duplicate jobs


def test_job_stuck_in_the_queue_is_cancelled_at_the_deadline():
    with serve() as (server, base, faults), _client(base) as client:
        server.pause()
        with pytest.raises(FalTimeoutError) as info:
            client.run(schemas.SEGMENTATION_MAP, _segmap_args(), timeout=1.0)
        (job,) = server.jobs.values()
        assert info.value.request_id == job.id and "was cancelled" in str(info.value)
        assert faults.count("cancel") == 1
        assert job.state == "COMPLETED" and job.error_type == "request_cancelled" and job.output is None


def test_slow_submit_is_not_sent_twice():
    # the server creates the job, but its answer arrives after the client stopped waiting
    faults = Faults().add("submit", delay_after=1.5)
    with serve(faults=faults) as (server, base, _f), _client(base) as client:
        with pytest.raises(FalTimeoutError, match="NOT submitted again"):
            client.run(schemas.SEGMENTATION_MAP, _segmap_args(), timeout=0.7)
        wait_until(lambda: len(server.jobs) == 1, what="the job the slow submit created")
        assert faults.count("submit") == 1 and len(server.jobs) == 1


def test_refused_connection_at_submit_is_retried_then_reported():
    with serve() as (_s, base, _f):
        pass  # the port is free again: connections are refused
    policy = PollPolicy(max_submit_attempts=2)
    with _client(base, policy=policy) as client:
        with pytest.raises(FalServerError, match="cannot connect"):
            client.submit(schemas.SEGMENTATION_MAP, _segmap_args())


# ---------------------------------------------------------------- where the key may go


def test_status_url_on_a_foreign_host_is_not_followed(caplog):
    with recorder() as (foreign, foreign_base), serve() as (server, base, faults):
        faults.add("submit", rewrite_urls_to=foreign_base)
        with _client(base) as client, caplog.at_level(logging.WARNING):
            request_id, _output = client.run(schemas.SEGMENTATION_MAP, _segmap_args(), timeout=30)
    assert foreign.seen == []
    assert faults.count("status") >= 1 and faults.count("result") == 1
    assert "ignoring status_url on another host" in caplog.text


def test_the_key_is_only_sent_to_the_configured_origin():
    with serve() as (_s, base, _f), _client(base) as client:
        with pytest.raises(FalConfigError, match="refusing to send the key"):
            client._send("GET", "http://127.0.0.2:9/elsewhere")  # the last line of defence


@pytest.mark.parametrize("url,ok", [
    ("https://queue.fal.run", True),
    ("https://queue.fal.run/", True),
    ("http://127.0.0.1:8765", True),
    ("http://localhost:8765", True),
    ("http://[::1]:8765", True),
    ("http://queue.fal.run", False),
    ("http://192.168.1.20:8765", False),
    ("https://user:pw@queue.fal.run", False),
    ("ftp://queue.fal.run", False),
    ("queue.fal.run", False),
])
def test_plain_http_is_only_for_loopback(url, ok):
    if ok:
        assert check_base_url(url) == url.rstrip("/")
    else:
        with pytest.raises(FalConfigError):
            check_base_url(url)


def test_downloads_refuse_plain_http_unless_the_queue_is_local_and_cap_the_size():
    with serve() as (_s, base, _f), _client(base) as client:
        request_id, output = client.run(schemas.SEGMENTATION_MAP, _segmap_args(h=64, w=64), timeout=30)
        url = schemas.parse_image_output(output).url
        with ResultDownloader() as remote_queue:
            with pytest.raises(FalDownloadError, match="refusing plain http"):
                remote_queue.fetch(url, request_id)
        with ResultDownloader(max_bytes=100, allow_loopback_http=True) as small:
            with pytest.raises(FalDownloadError, match="100-byte limit"):
                small.fetch(url, request_id)
        with ResultDownloader(allow_loopback_http=True) as local:
            assert local.fetch(url, request_id).startswith(b"\x89PNG")
            with pytest.raises(FalDownloadError, match="HTTP 404"):
                local.fetch(url.replace(".png", "x.png"), request_id)


def test_redact_shortens_data_uris_and_scrubs_the_key():
    uri = _data_uri()
    text = redact(f"bad input {uri} with Key {SERVER_KEY}", KEY)
    assert uri not in text and "test-secret-0123456789" not in text
    assert "data:image/png;base64," in text and "[redacted]" in text


def test_the_key_object_never_shows_its_secret():
    assert "secret" not in repr(KEY) and "secret" not in f"{KEY}" and "secret" not in str(KEY)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(KEY)
    headers = httpx.Headers({"Authorization": KEY.authorization()})
    assert headers["authorization"] == f"Key {SERVER_KEY}"
