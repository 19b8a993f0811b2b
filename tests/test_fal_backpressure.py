"""Issue 14, kind 6: back-pressure (429, Retry-After) is waited out within the node's timeout;
when the timeout ends first, the error says how many images finished.

The field report: six images against a queue that accepts two jobs at a time and answers the
rest 429 with ``Retry-After: 1`` (jobs of 4 s, timeout 60 s) failed after 3.1 s with
FalRateLimitError, cancelling the two accepted jobs. Here the same queue runs on 127.0.0.1 (the
pack's real server, its submits gated by testsupport.fal_server.limit_concurrency) with shorter
jobs. A 429 means "not accepted", so sending the submit again is safe; a submit whose outcome is
unknown is still never sent twice (README).

Timing bounds: a Retry-After of R s is waited R to 1.1·R s (polling.PollPolicy.retry_after_spread);
without one the n-th retry waits retry_base·2^(n-1) ×0.75–1.25. Loopback requests take a few ms;
upper bounds allow about 1 s of scheduling noise on a busy 2-core machine.
"""

import email.utils
import threading
import time

import pytest
import torch

from comfyui_sam_kit.nodes.seg_map import SamKitSegmentationMap
from comfyui_sam_kit.samkit.fal import remote, schemas
from comfyui_sam_kit.samkit.fal.keys import FalKey, Target
from comfyui_sam_kit.samkit.fal.client import FalClient
from comfyui_sam_kit.samkit.fal.errors import FalRateLimitError, FalServerError, FalTimeoutError
from comfyui_sam_kit.samkit.fal.polling import PollPolicy, retry_after_seconds
from testsupport.fal_host import FakeComfyHost, InterruptProcessingException
from testsupport.fal_server import (
    OPEN_SEGMAP,
    SERVER_KEY,
    Faults,
    limit_concurrency,
    real_handlers,
    serve,
    small_model,
    wait_until,
)

KEY = FalKey(SERVER_KEY, "test")
BUSY = {"detail": "Concurrency limit reached: 2 requests at a time"}
NGINX_503 = "<html><head><title>503 Service Temporarily Unavailable</title></head><body>nginx</body></html>"


def _images(b, seed=0, h=40, w=56):
    return (torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(seed)) * 255).round() / 255


def _args(seed=0):
    image = _images(1, seed)[0]
    return schemas.segmentation_map_arguments(schemas.png_data_uri(remote.encode_input_png(image)[0]))


def _gaps(times):
    return [b - a for a, b in zip(times, times[1:])]


def _handlers(hold):
    """The real seg map handler after ``hold(ctx)`` (which may sleep or wait for a cancel)."""
    handlers = real_handlers()
    segmap = handlers[schemas.SEGMENTATION_MAP]

    def held(arguments, ctx):
        hold(ctx)
        return segmap(arguments, ctx)

    handlers[schemas.SEGMENTATION_MAP] = held
    return handlers


def _until_cancelled(ctx, limit=10.0):
    end = time.monotonic() + limit
    while not ctx.cancelled and time.monotonic() < end:
        time.sleep(0.02)


# ---------------------------------------------------------------- the field report, scaled down


def test_six_images_through_a_two_at_a_time_queue_all_finish_in_order():
    running, peak, lock = [0], [0], threading.Lock()

    def a_while(ctx):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(1.2)
        with lock:
            running[0] -= 1

    image = _images(6, seed=7)
    with serve(_handlers(a_while), workers=2) as (server, base, faults):
        # the report's ratio (4 s jobs, Retry-After 1) at 1.2 s and 0.3 s: the refused images must
        # wait longer than a few Retry-Afters (the old client gave up after 3 of them, at 0.9 s here)
        limit_concurrency(faults, server, 2, retry_after="0.3")
        start = time.monotonic()
        result = remote.segmentation_map(image, target=Target("test", base, KEY, "test"), timeout=30)
        elapsed = time.monotonic() - start
        jobs = list(server.jobs.values())
    local_map, _segments, local_coverage = SamKitSegmentationMap().run(
        small_model(), image, OPEN_SEGMAP.points_per_side, OPEN_SEGMAP.pred_iou_thresh,
        OPEN_SEGMAP.stability_score_thresh, 0, 0, 0, box_nms_thresh=OPEN_SEGMAP.box_nms_thresh)
    # every image's own map, in the batch's order
    assert torch.equal(result.seg_map, local_map) and torch.equal(result.coverage, local_coverage)
    assert len(set(result.request_ids)) == 6 and set(result.request_ids) == {j.id for j in jobs}
    assert all(j.output is not None and j.error is None for j in jobs) and faults.count("cancel") == 0
    refused = faults.count("submit") - 6
    assert peak[0] == 2 and refused >= 2  # the limit held, and was hit
    # 6 jobs of 1.2 s two at a time: at least 3.6 s. Each of the 3 rounds adds the model's own time
    # (0.1-0.3 s), up to 0.76 s of poll lag (the back-off) and up to 0.33 s of Retry-After
    # misalignment: about 7 s at worst, plus noise on a loaded machine. Each refused submit waited
    # >= 0.3 s, so each of the 4 client threads was refused at most once per 0.3 s of the run.
    assert 3.6 <= elapsed < 15.0
    assert refused <= 4 * (elapsed / 0.3 + 1)


# ---------------------------------------------------------------- Retry-After forms


def _http_date_in(seconds):
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


@pytest.mark.parametrize("retry_after,times,min_gaps,max_total", [
    (lambda: {"Retry-After": "1"}, 2, (1.0, 1.0), 2 * 1.1 + 1.0),  # whole seconds, as RFC 9110 writes them
    (lambda: {"Retry-After": "0.4"}, 2, (0.4, 0.4), 2 * 0.44 + 1.0),  # decimals (the pack's own server)
    # an HTTP date 2 s ahead, truncated to the second by the format: the wait is between 1 and 2 s
    (lambda: {"Retry-After": _http_date_in(2)}, 1, (0.95,), 2 * 1.1 + 1.0),
    # none, or unreadable: back-off 0.1, 0.2, 0.4 s ×0.75–1.25 (retry_base=0.1)
    (lambda: {}, 3, (0.075, 0.15, 0.3), 1.25 * 0.7 + 1.0),
    (lambda: {"Retry-After": "soon"}, 3, (0.075, 0.15, 0.3), 1.25 * 0.7 + 1.0),
])
def test_a_refused_submit_waits_as_the_server_asks_then_creates_one_job(retry_after, times, min_gaps, max_total):
    faults = Faults().add("submit", status=429, body=BUSY, headers=retry_after, times=times)
    with serve(faults=faults) as (server, base, _f), FalClient(base, KEY, policy=PollPolicy(retry_base=0.1)) as client:
        start = time.monotonic()
        sub = client.submit(schemas.SEGMENTATION_MAP, _args(), deadline=time.monotonic() + 20)
        elapsed = time.monotonic() - start
    assert list(server.jobs) == [sub.request_id] and faults.count("submit") == times + 1
    gaps = _gaps(faults.times("submit"))
    assert all(g >= low for g, low in zip(gaps, min_gaps)), gaps
    if len(gaps) > 2 and min_gaps[1] > min_gaps[0]:
        assert gaps[0] < gaps[1] < gaps[2]  # the back-off grows (×2 beats ±25 % jitter)
    assert sum(min_gaps) <= elapsed < max_total


def test_retry_after_parsing():
    now = time.time()
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(" 0.5 ") == 0.5
    assert retry_after_seconds(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after_seconds(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0  # already passed
    assert retry_after_seconds("-4") == 0.0
    for unusable in (None, "", "soon", "nan", "inf", "Mon, 99 Foo 2020"):
        assert retry_after_seconds(unusable) is None, unusable


# ---------------------------------------------------------------- 503 at submit: only a gateway's is "not accepted"


def test_a_gateways_503_is_waited_out_but_fals_own_503_is_never_sent_again():
    faults = Faults().add("submit", status=503, body=NGINX_503, headers={"Retry-After": "0.5"})
    with serve(faults=faults) as (server, base, _f), FalClient(base, KEY) as client:
        client.run(schemas.SEGMENTATION_MAP, _args(), timeout=20)
    assert faults.count("submit") == 2 and len(server.jobs) == 1
    assert _gaps(faults.times("submit"))[0] >= 0.5

    # fal's own 503 carries its request id: the job may exist, so even a Retry-After does not make it safe
    faults = Faults().add("submit", status=503, body={"detail": "runner_scheduling_failure"},
                          headers={"Retry-After": "0.2", "x-fal-request-id": "req-503"})
    with serve(faults=faults) as (server, base, _f), FalClient(base, KEY) as client:
        with pytest.raises(FalServerError) as info:
            client.run(schemas.SEGMENTATION_MAP, _args(), timeout=20)
    assert faults.count("submit") == 1 and "NOT submitted again" in str(info.value)
    assert info.value.request_id == "req-503"


# ---------------------------------------------------------------- 429 while polling


def test_429_on_status_and_result_is_waited_out_and_is_not_a_failure():
    # max_read_failures=2: three 429s in a row would end the job if they counted as failures
    policy = PollPolicy(max_read_failures=2)
    faults = (Faults().add("status", status=429, body=BUSY, headers={"Retry-After": "0.3"}, times=3)
              .add("result", status=429, body=BUSY, headers={"Retry-After": "0.2"}))
    with serve(faults=faults) as (server, base, _f), FalClient(base, KEY, policy=policy) as client:
        start = time.monotonic()
        request_id, output = client.run(schemas.SEGMENTATION_MAP, _args(), timeout=20)
        elapsed = time.monotonic() - start
    assert schemas.parse_image_output(output).url and list(server.jobs) == [request_id]
    assert faults.count("status") >= 4 and faults.count("result") == 2 and faults.count("cancel") == 0
    assert all(g >= 0.3 for g in _gaps(faults.times("status"))[:3])
    assert 3 * 0.3 + 0.2 <= elapsed < 3 * 0.33 + 0.22 + 2.0


# ---------------------------------------------------------------- waits that cannot fit


def test_a_retry_after_longer_than_the_time_left_fails_at_once():
    faults = Faults().add("submit", status=429, body=BUSY, headers={"Retry-After": "30"})
    with serve(faults=faults) as (server, base, _f), FalClient(base, KEY) as client:
        start = time.monotonic()
        with pytest.raises(FalRateLimitError) as info:
            client.run(schemas.SEGMENTATION_MAP, _args(), timeout=5)
        elapsed = time.monotonic() - start
    message = str(info.value)
    assert "Concurrency limit reached" in message and "wait 30 s (Retry-After)" in message
    assert "left of the timeout" in message and "HTTP 429" in message
    assert faults.count("submit") == 1 and not server.jobs and elapsed < 1.0  # not 5 s, not 30 s

    # the same on a status poll: the job exists, so it is named and cancelled
    faults = Faults().add("status", status=429, body=BUSY, headers={"Retry-After": "30"})
    with serve(faults=faults) as (server, base, _f), FalClient(base, KEY) as client:
        server.pause()
        start = time.monotonic()
        with pytest.raises(FalRateLimitError) as info:
            client.run(schemas.SEGMENTATION_MAP, _args(), timeout=5)
        elapsed = time.monotonic() - start
        (job,) = server.jobs.values()
    assert f"request {job.id}" in str(info.value) and "wait 30 s" in str(info.value) and elapsed < 1.0
    assert faults.count("cancel") == 1 and job.error_type == "request_cancelled"


def test_when_the_timeout_ends_while_images_wait_the_error_counts_the_finished_ones():
    started, lock = [0], threading.Lock()

    def first_quick_then_held(ctx):
        with lock:
            started[0] += 1
            first = started[0] == 1
        if not first:
            _until_cancelled(ctx)  # runs past the timeout

    with serve(_handlers(first_quick_then_held)) as (server, base, faults):
        limit_concurrency(faults, server, 1, retry_after="0.2")
        start = time.monotonic()
        # the waiting image ends it: when its next Retry-After (0.2 s) no longer fits in the time
        # left it stops at once (429, "longer than the ... s left of the timeout"); or the running
        # one reaches the deadline first ("did not finish within 2 s")
        with pytest.raises((FalRateLimitError, FalTimeoutError)) as info:
            remote.segmentation_map(_images(3), target=Target("test", base, KEY, "test"), timeout=2.0)
        elapsed = time.monotonic() - start
        jobs = list(server.jobs.values())
        wait_until(lambda: all(j.state == "COMPLETED" for j in jobs), what="the cancelled job to end")
    message = str(info.value)
    assert "1 of 3 images had finished" in message and ("left of the timeout" in message or "within 2 s" in message)
    # one job finished, the one running at the timeout was cancelled (the user gets nothing from it),
    # the third image was never accepted
    finished = [j for j in jobs if j.output is not None]
    cancelled = [j for j in jobs if j.error_type == "request_cancelled"]
    assert len(jobs) == 2 and len(finished) == 1 and len(cancelled) == 1 and faults.count("cancel") == 1
    # the third image waited 0.2–0.22 s between tries for the whole 2 s
    assert 2.0 / 0.22 - 2 <= faults.count("submit") - 2 <= 2.0 / 0.2 + 2
    assert 2.0 - 0.22 <= elapsed < 3.5


def test_cancel_in_comfyui_while_waiting_for_back_pressure_stops_promptly(monkeypatch):
    host = FakeComfyHost(monkeypatch)
    with serve(_handlers(_until_cancelled)) as (server, base, faults):
        limit_concurrency(faults, server, 1, retry_after="5")
        interrupted_at = []

        def press_cancel():
            wait_until(lambda: len(server.jobs) == 1 and faults.count("submit") >= 3, what="1 accepted, 2 refused")
            interrupted_at.append(time.monotonic())
            host.interrupt()

        watcher = threading.Thread(target=press_cancel)
        watcher.start()
        with pytest.raises(InterruptProcessingException):
            remote.segmentation_map(_images(3), target=Target("test", base, KEY, "test"), timeout=30)
        stopped = time.monotonic() - interrupted_at[0]
        watcher.join()
        (job,) = server.jobs.values()
        wait_until(lambda: job.state == "COMPLETED", what="the cancelled job to end")
    # the two refused images were in their 5 s Retry-After wait: they stop within a check interval
    # (0.1 s) plus the host loop's 0.1 s, and are not submitted again; the accepted job is cancelled
    assert stopped < 1.0 and faults.count("submit") == 3
    assert faults.count("cancel") == 1 and job.error_type == "request_cancelled"
    assert host.texts[-1].endswith("cancelled")
