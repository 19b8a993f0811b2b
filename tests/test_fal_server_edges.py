"""The self-hosted server's optional fal features, one by one, on 127.0.0.1: image URL fetching
and its SSRF rules, data URIs of any MIME type, the SSE status stream, webhooks, CORS, the
synchronous run, forwarded headers, and X-Fal-Request-Timeout enforced at its deadline.
(tests/test_fal_official_clients.py runs fal's own clients through all of it.)"""

from __future__ import annotations

import base64
import ipaddress
import json
import ssl
import threading
import time

import httpx
import pytest

from comfyui_sam_kit.samkit.fal import schemas, url_fetch
from comfyui_sam_kit.samkit.fal.url_fetch import OutboundPolicy, OutboundRefused
from testsupport.fal_server import SERVER_KEY, serve, wait_until
from testsupport.tls_loopback import image_and_webhook_site, make_certificates
from test_fal_server import _data_uri, _finish, _gated_handler, _http, _submit

AUTH = {"Authorization": f"Key {SERVER_KEY}"}
LOOPBACK = OutboundPolicy(hosts=("127.0.0.1",), allow_private=True, timeout=5.0)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture()
def site(certs, monkeypatch):
    """The loopback https image/webhook host; the server's outbound client trusts the test CA."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    monkeypatch.setattr(url_fetch, "tls_context", lambda trust_env: context)
    png = base64.b64decode(_data_uri().split(",", 1)[1])
    with image_and_webhook_site(png, certs) as (url, recorded):
        yield url, recorded, png


def test_a_body_that_is_not_json_or_nested_past_pythons_parser_is_a_422_not_a_500():
    # json.loads raises RecursionError (not ValueError) on deep nesting; the server must answer
    # fal's 422 shape for it as for any other body that is not JSON
    with serve() as (server, base, _f), _http(base) as http:
        for raw in (b"{not json", b"[" * 100_000):
            answer = http.post(f"/{schemas.SEGMENTATION_MAP}", content=raw, headers={"Content-Type": "application/json"})
            assert answer.status_code == 422 and answer.json()["detail"][0]["type"] == "json_invalid"
        assert not server.jobs


# ---------------------------------------------------------------- fetching image URLs


def test_https_image_url_is_refused_by_default_and_the_422_says_how_to_allow_it():
    with serve() as (server, base, _f), _http(base) as http:
        answer = _submit(http, image_url="https://storage.googleapis.com/falserverless/cat.png")
        assert answer.status_code == 422 and not server.jobs
        assert "--fetch-host" in answer.json()["detail"][0]["msg"]


def test_the_fetch_rules(site):
    url, _recorded, png = site
    assert url_fetch.fetch_bytes(f"{url}/cat.png", LOOPBACK) == png
    assert url_fetch.fetch_bytes(f"{url}/moved.png", LOOPBACK) == png  # a redirect on the list is followed
    refusals = [
        (f"{url}/cat.png", OutboundPolicy(hosts=("127.0.0.1",)), "loopback"),  # private addresses need allowing
        (f"{url}/away.png", LOOPBACK, "'localhost' is not on"),  # every hop is checked
        (f"{url}/cat.png", OutboundPolicy(hosts=("example.com",), allow_private=True), "not on"),
        (f"{url}/slow.png", OutboundPolicy(hosts=("127.0.0.1",), allow_private=True, timeout=0.5), "within 0.5 s"),
        (f"{url}/cat.png", OutboundPolicy(hosts=("127.0.0.1",), allow_private=True, max_bytes=100), "at most 100"),
        (url.replace("https://", "http://") + "/cat.png", LOOPBACK, "https://"),
        (url.replace("https://", "https://user:pw@") + "/cat.png", LOOPBACK, "user name"),
    ]
    for bad, policy, said in refusals:
        with pytest.raises(OutboundRefused, match=said):
            url_fetch.fetch_bytes(bad, policy)


@pytest.mark.parametrize("address,public", [("8.8.8.8", True), ("10.1.2.3", False), ("169.254.169.254", False),
                                            ("127.0.0.1", False), ("::1", False), ("::ffff:10.0.0.1", False),
                                            ("fe80::1", False), ("0.0.0.0", False), ("2606:4700::1111", True)])
def test_which_addresses_count_as_public(address, public):
    assert url_fetch.is_public(address) is public


# IPv6 forms that carry an IPv4 address a gateway connects to: NAT64 (RFC 6052 64:ff9b::/96, RFC 8215
# 64:ff9b:1::/48), 6to4 (RFC 3056 2002::/16) and IPv4-compatible (::/96). On an IPv6-only network with
# DNS64, 64:ff9b::a9fe:a9fe *is* 169.254.169.254, so a name with that AAAA answer must be refused.
@pytest.mark.parametrize("address,public", [("64:ff9b::7f00:1", False), ("64:ff9b::a9fe:a9fe", False),
                                            ("64:ff9b::808:808", True), ("64:ff9b:1::a00:1", False),
                                            ("2002:a00:1::", False), ("2002:808:808::1", True),
                                            ("::7f00:1", False), ("::a00:1", False)])
def test_ipv6_forms_embedding_an_ipv4_address_are_judged_by_that_address(address, public):
    assert url_fetch.is_public(address) is public


def test_a_fetched_url_and_an_octet_stream_data_uri_are_judged_by_their_bytes(site):
    url, _recorded, _png = site
    png_b64 = _data_uri().split(",", 1)[1]
    with serve(fetch=LOOPBACK) as (_server, base, _f), _http(base) as http:
        cases = {f"{url}/cat.png": 200, f"{url}/text.png": 422,
                 "data:application/octet-stream;base64," + png_b64: 200,
                 "data:;base64," + png_b64: 200,
                 "data:image/png;base64," + base64.b64encode(b"not an image at all").decode(): 422}
        for image_url, expected in cases.items():
            body = _submit(http, image_url=image_url).json()
            _finish(http, body["status_url"])
            result = http.get(body["response_url"])
            assert result.status_code == expected, (image_url[:60], result.text)
            if expected == 422:
                assert "Could not load image" in result.json()["detail"][0]["msg"]


# ---------------------------------------------------------------- webhooks


def test_a_webhook_is_refused_at_submit_unless_its_host_is_allowed(site):
    url, _recorded, _png = site
    with serve() as (server, base, _f), _http(base) as http:
        answer = http.post(f"/{schemas.SEGMENTATION_MAP}", params={"fal_webhook": f"{url}/hook"},
                           json={"image_url": _data_uri()})
        assert answer.status_code == 422 and not server.jobs
        assert answer.json()["detail"][0]["loc"] == ["query", "fal_webhook"]
        assert "--webhook-host" in answer.json()["detail"][0]["msg"]
    with serve(webhooks=OutboundPolicy(hosts=("hooks.example.com",))) as (_s, base, _f), _http(base) as http:
        answer = http.post(f"/{schemas.SEGMENTATION_MAP}", params={"fal_webhook": f"{url}/hook"},
                           json={"image_url": _data_uri()})
        assert answer.status_code == 422 and "not on" in answer.json()["detail"][0]["msg"]


def test_webhooks_are_delivered_in_fals_shape_and_retried(site):
    url, recorded, _png = site
    recorded.flaky_failures = 1
    with serve(webhooks=LOOPBACK, webhook_retries=2) as (_s, base, _f), _http(base) as http:
        ok = http.post(f"/{schemas.SEGMENTATION_MAP}", params={"fal_webhook": f"{url}/flaky-hook"},
                       json={"image_url": _data_uri()}).json()
        bad = http.post(f"/{schemas.SEGMENTATION_MAP}", params={"fal_webhook": f"{url}/hook"},
                        json={"image_url": "data:image/png;base64," + "QUJD" * 50}).json()
        wait_until(lambda: len(recorded.webhooks) == 2, timeout=30, what="two webhooks")
        by_id = {w["request_id"]: w for w in recorded.webhooks}
        assert by_id[ok["request_id"]] == {"request_id": ok["request_id"], "gateway_request_id": ok["request_id"],
                                           "status": "OK", "payload": http.get(ok["response_url"]).json()}
        assert recorded.flaky_tries == 2  # one 500, then delivered
        failed = by_id[bad["request_id"]]
        assert failed["status"] == "ERROR" and failed["error"] == "Invalid status code: 422"
        assert failed["payload"] == http.get(bad["response_url"]).json()


# ---------------------------------------------------------------- the status stream


def test_the_status_stream_sends_changes_as_server_sent_events_and_ends_after_completed():
    with serve() as (server, base, _f), _http(base) as http:
        server.pause()
        body = _submit(http).json()
        events = []
        with http.stream("GET", body["status_url"] + "/stream", params={"logs": "1"}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if len(events) == 1:
                        server.resume()
        # the server closed the stream after COMPLETED (iter_lines returned)
        assert events[0]["status"] == "IN_QUEUE" and events[0]["queue_position"] == 0
        assert events[-1]["status"] == "COMPLETED" and events[-1]["error"] is None
        logs = [entry["message"] for e in events[1:] for entry in e["logs"] or []]
        assert logs and len(logs) == len(set(logs))  # each log line once: clients accumulate them
        assert httpx.get(body["status_url"] + "/stream", trust_env=False).status_code == 401


# ---------------------------------------------------------------- CORS, forwarded headers, run, start timeout


def test_cors_preflight_needs_no_key_and_answers_carry_the_origin():
    app = "https://app.example.com"
    with serve(cors_origins=(app,)) as (_s, base, _f):
        pre = httpx.options(f"{base}/{schemas.TINY_SAM}", trust_env=False, headers={
            "Origin": app, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == app
        assert "authorization" in pre.headers["access-control-allow-headers"]
        refused = httpx.options(f"{base}/{schemas.TINY_SAM}", trust_env=False, headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
        no_key = httpx.post(f"{base}/{schemas.SEGMENTATION_MAP}", json={}, headers={"Origin": app}, trust_env=False)
        assert no_key.status_code == 401 and no_key.headers["access-control-allow-origin"] == app
        ok = httpx.post(f"{base}/{schemas.SEGMENTATION_MAP}", json={"image_url": _data_uri()},
                        headers={"Origin": app, **AUTH}, trust_env=False)
        assert ok.status_code == 200 and "x-fal-request-id" in ok.headers["access-control-expose-headers"]
    with serve() as (_s, base, _f):  # no --cors-origin: no CORS
        pre = httpx.options(f"{base}/{schemas.TINY_SAM}", trust_env=False, headers={
            "Origin": app, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers


def test_forwarded_headers_count_only_from_trusted_proxies():
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gpu.example.com"}
    rfc = {"Forwarded": 'for=1.2.3.4;proto=https;host="gpu.example.com:8443"'}
    loopback = (ipaddress.ip_network("127.0.0.1/32"),)
    cases = [({}, forwarded, "http://127.0.0.1"),  # not trusted: ignored
             (dict(trusted_proxies=loopback), forwarded, "https://gpu.example.com/"),
             (dict(trusted_proxies=loopback), rfc, "https://gpu.example.com:8443/"),
             (dict(trusted_proxies=loopback, public_url="https://pub.example.com"), forwarded,
              "https://pub.example.com/"),
             # a trusted proxy that appends (RFC 7239 4; X-Forwarded-* appending setups) leaves the
             # client's own value first: the last element is the one the trusted peer wrote
             (dict(trusted_proxies=loopback), {"X-Forwarded-Proto": "http, https",
                                               "X-Forwarded-Host": "evil.example.net, gpu.example.com"},
              "https://gpu.example.com/"),
             (dict(trusted_proxies=loopback), {"Forwarded": 'host=evil.example.net;proto=http, ' + rfc["Forwarded"]},
              "https://gpu.example.com:8443/")]
    for settings, headers, expected in cases:
        with serve(**settings) as (_s, base, _f), _http(base) as http:
            body = http.post(f"/{schemas.SEGMENTATION_MAP}", json={"image_url": _data_uri()}, headers=headers).json()
            assert body["status_url"].startswith(expected), (settings, body["status_url"])


def test_the_synchronous_run_answers_the_result():
    with serve() as (_s, base, _f), _http(base) as http:
        ran = http.post(f"/run/{schemas.SEGMENTATION_MAP}", json={"image_url": _data_uri()}, timeout=60)
        assert ran.status_code == 200 and set(ran.json()) == {"image"} and ran.headers["x-fal-request-id"]
        assert http.post(f"/run/{schemas.SEGMENTATION_MAP}", json={}).status_code == 422
        assert http.post("/run/fal-ai/flux/dev", json={"image_url": _data_uri()}).status_code == 404
        bad = http.post(f"/run/{schemas.SEGMENTATION_MAP}", json={"image_url": "data:image/png;base64," + "QUJD" * 50})
        assert bad.status_code == 422 and "Could not load image" in bad.json()["detail"][0]["msg"]


def test_a_run_whose_client_goes_away_is_cancelled():
    started, release = threading.Event(), threading.Event()
    with serve({schemas.SEGMENTATION_MAP: _gated_handler(started, release)}) as (server, base, _f):
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while the job runs
            httpx.post(f"{base}/run/{schemas.SEGMENTATION_MAP}", json={"image_url": _data_uri()}, headers=AUTH,
                       timeout=httpx.Timeout(10, read=0.5), trust_env=False)
        assert started.is_set()
        job = next(iter(server.jobs.values()))
        wait_until(lambda: job.state == "COMPLETED", timeout=10, what="the run to be cancelled")
        assert job.error_type == "request_cancelled" and not release.is_set()


def test_the_start_timeout_fails_a_waiting_job_at_its_deadline():
    with serve() as (server, base, _f), _http(base) as http:
        server.pause()  # nothing starts: before, the job stayed IN_QUEUE until a worker reached it
        t0 = time.monotonic()
        body = http.post(f"/{schemas.SEGMENTATION_MAP}", json={"image_url": _data_uri()},
                         headers={"X-Fal-Request-Timeout": "0.3"}).json()
        done = _finish(http, body["status_url"], timeout=5)
        waited = time.monotonic() - t0
        assert done["error_type"] == "request_timeout"
        # deadline 0.3 s; status is polled every 50 ms; 0.5 s of slack covers a loaded 2-core machine
        assert 0.3 <= waited < 0.8, waited
        assert http.get(body["response_url"]).status_code == 504


def test_cli_refuses_bad_edge_options_before_loading_a_model(capsys, monkeypatch):
    from comfyui_sam_kit.samkit import runtime
    from comfyui_sam_kit.samkit.fal.cli import main

    monkeypatch.setattr(runtime.hooks, "progress", runtime.hooks.progress)  # main() installs a terminal bar
    base = ["--model", "nope.pth", "--no-require-key"]
    for extra, said in ((["--trusted-proxy", "gpu-box"], "--trusted-proxy 'gpu-box'"),
                        (["--cors-origin", "https://app.example.com/path"], "--cors-origin"),
                        (["--fetch-max-mb", "0"], "--fetch-max-mb")):
        assert main(base + extra) == 2
        assert said in capsys.readouterr().err
