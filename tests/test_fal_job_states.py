"""Issue 14, kind 5: every terminal or unknown status ends polling promptly with the server's own
message and the request id, and polling backs off.

The field report: a queue whose status said ``{"status": "FAILED", "error": "boom"}`` (while the
result URL answered 202) was polled 193 times in 20 s and ended in a timeout that never showed
"boom". Each test runs the real client against the pack's real server on 127.0.0.1; the status
or result answers of other servers are injected in front of it (testsupport.fal_server.Faults).
The server is paused where the injected status must be the only truth: the real job then stays
queued, so its result URL answers 202, as in the report.

Timing bounds come from the poll schedule (samkit.fal.polling): polls at 0.1 s then ×1.5 (0.1,
0.15, 0.225, 0.34, 0.51, 0.76 s...); retries after failures wait retry_base·2^(n-1) ×0.75–1.25.
Loopback requests take a few ms; upper bounds allow about 1 s of scheduling noise on a busy
2-core machine.
"""

import time

import pytest
import torch

from comfyui_sam_kit.samkit.fal import remote, schemas
from comfyui_sam_kit.samkit.fal.keys import FalKey, Target
from comfyui_sam_kit.samkit.fal.client import FalClient
from comfyui_sam_kit.samkit.fal.errors import (
    FalError,
    FalJobFailedError,
    FalNotFoundError,
    FalProtocolError,
    FalServerError,
    FalTimeoutError,
    FalValidationError,
)
from comfyui_sam_kit.samkit.fal.polling import PollPolicy
from testsupport.fal_server import SERVER_KEY, Faults, real_handlers, serve

KEY = FalKey(SERVER_KEY, "test")
SECRET = SERVER_KEY.split(":")[1]
NGINX_502 = "<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"


def _args(seed=0):
    image = torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(seed))
    return schemas.segmentation_map_arguments(schemas.png_data_uri(remote.encode_input_png(image)[0]))


def _run_paused(faults, policy=None, timeout=20.0):
    """Run one job on a paused server with ``faults``: (error, request id, faults, server, seconds)."""
    with serve(faults=faults) as (server, base, _f), FalClient(base, KEY, policy=policy) as client:
        server.pause()
        start = time.monotonic()
        with pytest.raises(FalError) as info:
            client.run(schemas.SEGMENTATION_MAP, _args(), timeout=timeout)
        elapsed = time.monotonic() - start
        (job_id,) = server.jobs
        return info.value, job_id, faults, server, elapsed


def _gaps(times):
    return [b - a for a, b in zip(times, times[1:])]


# ---------------------------------------------------------------- terminal statuses


@pytest.mark.parametrize("body,said", [
    ({"status": "FAILED", "error": "boom"}, "boom"),  # the field report
    ({"status": "ERROR", "detail": "CUDA error: out of memory"}, "CUDA error: out of memory"),
    ({"status": "CANCELLED", "message": "cancelled by the operator"}, "cancelled by the operator"),
    ({"status": "CANCELED", "error": {"message": "runner preempted", "code": 503}}, "runner preempted"),
    ({"status": "failed", "error": {"detail": [{"loc": ["body", "image_url"], "msg": "image too small",
                                                "type": "value_error"}]}}, "image_url: image too small"),
    ({"status": "TIMED_OUT", "logs": [{"message": "loading weights", "level": "INFO"},
                                      {"message": "RuntimeError: tile too large", "level": "ERROR"}]},
     "RuntimeError: tile too large"),
    ({"status": "CANCELLATION_REQUESTED", "logs": [{"message": "stopping", "level": "INFO"}]},
     "last log line: stopping"),
    ({"status": "EXPIRED", "error": f"bad header 'Key {SERVER_KEY}'", "error_type": "auth"}, "bad header"),
])
def test_a_terminal_status_ends_polling_at_once_with_the_servers_message(body, said):
    error, job_id, faults, _server, elapsed = _run_paused(Faults().add("status", status=200, body=body, times=100))
    message = str(error)
    assert isinstance(error, FalJobFailedError) and error.request_id == job_id
    assert said in message and f"request {job_id}" in message and body["status"] in message
    assert SECRET not in message
    # one status poll (at 0.1 s), no result read (the reason is known), no cancel (the job is over)
    assert faults.count("status") == 1 and faults.count("result") == 0 and faults.count("cancel") == 0
    assert elapsed < 1.5  # was 20 s of polling; the job itself needs ~0.1 s + two loopback requests


def test_a_terminal_status_without_a_reason_reads_the_result_once():
    faults = Faults().add("status", status=200, body={"status": "FAILED"}, times=100)
    error, job_id, faults, _server, _elapsed = _run_paused(faults)
    assert isinstance(error, FalJobFailedError) and "ended with status FAILED: the server gave no reason" in str(error)
    assert f"request {job_id}" in str(error) and faults.count("result") == 1 and faults.count("status") == 1

    # the reason only in the result (an app error, carrying fal's request id: not retried)
    faults = (Faults().add("status", status=200, body={"status": "ERROR"}, times=100)
              .add("result", status=500, body={"detail": "worker crashed: segfault", "error_type": "internal_error"},
                   headers={"x-fal-request-id": "x"}))
    error, job_id, faults, _server, _elapsed = _run_paused(faults)
    assert isinstance(error, FalServerError) and "worker crashed: segfault" in str(error)
    assert "[internal_error]" in str(error) and "HTTP 500" in str(error) and f"request {job_id}" in str(error)
    assert faults.count("result") == 1 and faults.count("cancel") == 0


@pytest.mark.parametrize("status,body,headers,error_class,said", [
    (422, {"detail": [{"loc": ["body", "image_url"], "msg": "Could not load image from url: data:image/png;base64,"
                                                            + "A" * 400, "type": "value_error"}]}, {},
     FalValidationError, "image_url: Could not load image from url"),
    (500, {"detail": "Internal error while running the model", "error_type": "internal_error"},
     {"x-fal-request-id": "x"}, FalServerError, "Internal error while running the model"),
    (400, {"detail": "Request was cancelled", "error_type": "request_cancelled"}, {}, FalError, "Request was cancelled"),
    (504, {"detail": "The request did not start before its X-Fal-Request-Timeout", "error_type": "request_timeout"},
     {"X-Fal-Request-Timeout-Type": "user"}, FalTimeoutError, "did not start before its X-Fal-Request-Timeout"),
])
def test_completed_whose_result_is_an_error_payload(status, body, headers, error_class, said):
    faults = Faults().add("result", status=status, body=body, headers=headers)
    with serve(faults=faults) as (server, base, _f), FalClient(base, KEY) as client:
        with pytest.raises(error_class) as info:
            client.run(schemas.SEGMENTATION_MAP, _args(), timeout=20)
    (job_id,) = server.jobs
    message = str(info.value)
    assert said in message and f"HTTP {status}" in message and f"request {job_id}" in message
    assert "A" * 100 not in message  # an echoed data URI is shortened
    assert server.jobs[job_id].state == "COMPLETED" and faults.count("result") == 1 and faults.count("cancel") == 0


def test_completed_with_an_error_and_no_result_reports_the_error_at_once():
    faults = Faults().add("status", status=200, times=100, body={"status": "COMPLETED", "error": "Out of memory",
                                                                 "error_type": "runner_oom", "logs": []})
    error, job_id, faults, _server, elapsed = _run_paused(faults)
    assert isinstance(error, FalJobFailedError) and "Out of memory" in str(error) and "[runner_oom]" in str(error)
    assert f"request {job_id}" in str(error) and faults.count("result") == 1 and elapsed < 1.5


def test_a_result_that_stays_not_ready_after_completed_is_asked_a_bounded_number_of_times():
    policy = PollPolicy()
    faults = Faults().add("status", status=200, times=100,
                          body={"status": "COMPLETED", "error": None, "logs": [{"message": "done", "level": "INFO"}]})
    error, job_id, faults, _server, elapsed = _run_paused(faults, policy)
    assert isinstance(error, FalProtocolError) and "answered 'not ready' 6 times" in str(error)
    assert f"request {job_id}" in str(error) and "last log line" not in str(error)  # a done job's logs are no error
    assert faults.count("result") == policy.max_result_waits == 6
    # sleeps between the 6 reads: 0.1, 0.15, 0.225, 0.3375, 0.506 s = 1.32 s, each gap longer than the last
    gaps = _gaps(faults.times("result"))
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:])), gaps
    assert sum(gaps) >= 1.3 and elapsed < 3.5


# ---------------------------------------------------------------- unknown statuses and unreadable answers


def test_an_unknown_status_is_polled_with_back_off_then_given_up_and_cancelled():
    policy = PollPolicy()
    faults = Faults().add("status", status=200, times=100, body={"status": "WARMING_UP", "message": "pulling image"})
    error, job_id, faults, server, elapsed = _run_paused(faults, policy)
    message = str(error)
    assert isinstance(error, FalProtocolError) and "'WARMING_UP'" in message and "pulling image" in message
    assert f"request {job_id}" in message and "gave up after 6 such answers" in message
    assert faults.count("status") == policy.max_unknown_polls == 6
    assert faults.count("result") == 0  # was: the result URL hit 10 times a second
    assert faults.count("cancel") == 1 and server.jobs[job_id].error_type == "request_cancelled"
    # polls at 0.1, 0.25, 0.475, 0.81, 1.32, 2.08 s: gaps grow ×1.5
    gaps = _gaps(faults.times("status"))
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:])), gaps
    assert 2.0 <= elapsed < 4.0


def test_an_unknown_status_that_passes_does_not_end_the_job():
    faults = Faults().add("status", status=202, times=3, body={"status": "STARTING_RUNNER"})
    with serve(faults=faults) as (server, base, _f), FalClient(base, KEY) as client:
        request_id, output = client.run(schemas.SEGMENTATION_MAP, _args(), timeout=20)
    assert schemas.parse_image_output(output).url and faults.count("status") >= 4 and faults.count("cancel") == 0


@pytest.mark.parametrize("code,text,said", [
    (200, "<html><head><title>Sign in to Wi-Fi</title></head><body>portal</body></html>",
     "an HTML page titled 'Sign in to Wi-Fi'"),
    (202, "upstream connect error or disconnect/reset before headers", "upstream connect error"),
    (200, '{"status": "IN_PROG', '{"status": "IN_PROG'),
])
def test_a_status_answer_that_is_not_json_ends_polling_with_what_it_was(code, text, said):
    error, job_id, faults, _server, elapsed = _run_paused(Faults().add("status", status=code, body=text, times=100))
    assert isinstance(error, FalProtocolError) and said in str(error) and f"request {job_id}" in str(error)
    assert f"HTTP {code}" in str(error) and "not JSON" in str(error)
    assert faults.count("status") == 1 and faults.count("cancel") == 1 and elapsed < 1.5


def test_a_status_answering_404_means_the_job_is_gone():
    faults = Faults().add("status", status=404, body={"detail": "Request not found"}, times=100)
    error, job_id, faults, _server, elapsed = _run_paused(faults)
    assert isinstance(error, FalNotFoundError) and "Request not found" in str(error)
    assert f"request {job_id}" in str(error) and "HTTP 404" in str(error)
    assert faults.count("status") == 1 and faults.count("cancel") == 0 and elapsed < 1.5


# ---------------------------------------------------------------- 5xx bursts and the poll rate


def test_a_5xx_burst_on_status_is_retried_with_growing_waits():
    policy = PollPolicy(retry_base=0.1)
    faults = Faults().add("status", status=502, body=NGINX_502, times=3)
    with serve(faults=faults) as (server, base, _f), FalClient(base, KEY, policy=policy) as client:
        request_id, output = client.run(schemas.SEGMENTATION_MAP, _args(), timeout=20)
    assert schemas.parse_image_output(output).url and list(server.jobs) == [request_id]
    # retries wait 0.1, 0.2, 0.4 s ×0.75–1.25: the gaps after the three 502s are at least 0.075, 0.15, 0.3 s
    first_gaps = _gaps(faults.times("status"))[:3]
    assert [g >= low for g, low in zip(first_gaps, (0.075, 0.15, 0.3))] == [True] * 3, first_gaps
    assert faults.count("cancel") == 0


def test_a_lasting_5xx_on_status_gives_up_after_the_bound_with_the_servers_text():
    policy = PollPolicy(retry_base=0.1, max_read_failures=4)
    faults = Faults().add("status", status=503, times=100, headers={"x-fal-request-id": "x"},
                          body={"detail": "Runner disconnected", "error_type": "runner_disconnected"})
    error, job_id, faults, _server, elapsed = _run_paused(faults, policy)
    message = str(error)
    assert isinstance(error, FalServerError) and "Runner disconnected" in message and "[runner_disconnected]" in message
    assert f"request {job_id}" in message and "asked 4 times" in message
    assert faults.count("status") == 4 and faults.count("cancel") == 1
    # first poll at 0.1 s, then waits of 0.1, 0.2, 0.4 s ×0.75–1.25 before the other three
    assert 0.1 + 0.75 * 0.7 <= elapsed < 0.1 + 1.25 * 0.7 + 1.0


def test_polling_a_running_job_backs_off():
    handlers = real_handlers()
    segmap = handlers[schemas.SEGMENTATION_MAP]

    def slow(arguments, ctx):
        time.sleep(1.5)
        return segmap(arguments, ctx)

    handlers[schemas.SEGMENTATION_MAP] = slow
    with serve(handlers) as (_server, base, faults), FalClient(base, KEY) as client:
        client.run(schemas.SEGMENTATION_MAP, _args(), timeout=20)
    # a 1.5 s job: polls at 0.1, 0.25, 0.475, 0.81, 1.32, 2.08 s (the last sees COMPLETED): 6, where a
    # fixed 0.1 s rate would make 15+; the intervals never shrink while the state stays the same
    polls = faults.count("status")
    assert 5 <= polls <= 7, polls
    gaps = _gaps(faults.times("status"))
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:])), gaps


def test_an_error_payload_sent_with_http_200_is_shown_by_the_node():
    faults = Faults().add("result", status=200, body={"detail": "boom: the model crashed"})
    with serve(faults=faults) as (server, base, _f):
        target = Target("test", base, KEY, "test")
        with pytest.raises(FalError) as info:
            remote.segmentation_map(torch.rand(1, 24, 32, 3), target=target, timeout=20)
    (job_id,) = server.jobs
    assert "the server said: boom: the model crashed" in str(info.value) and f"request {job_id}" in str(info.value)
