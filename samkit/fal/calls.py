"""fal's four queue calls over httpx (sync): submit, status, result, cancel, with retries.

The wire protocol (see docs/research, fal's docs and the official clients):

* submit ``POST {base}/{owner}/{app}[/{path}]`` → ``{request_id, status_url, response_url,
  cancel_url, status: "IN_QUEUE", queue_position}``;
* status ``GET {base}/{owner}/{app}/requests/{id}/status?logs=1`` → ``IN_QUEUE`` (with
  ``queue_position``), ``IN_PROGRESS`` (``logs``), ``COMPLETED`` (``logs``, ``metrics``; a failed
  job also ends ``COMPLETED`` and its error comes with the result);
* result ``GET {base}/{owner}/{app}/requests/{id}`` → the app's own status code and body;
* cancel ``PUT {base}/{owner}/{app}/requests/{id}/cancel``.

Safety rules this module keeps:

* The key goes in an ``Authorization`` header set on each queue request, never as a client
  default, and only to the configured base's scheme+host+port. URLs returned by submit are
  followed only when they have that same origin; otherwise they are rebuilt from
  owner/app/request id. Redirects are not followed. Result files are fetched by a separate
  client that has no key at all, with a size cap (:mod:`.downloads`).
* Plain ``http://`` is refused unless the host is a loopback address (:mod:`.transport`).
* A submit is re-sent only when it provably did not create a job: the connection was never
  made, or the answer was 429 (rate/concurrency limit) or an ingress 503 (no
  ``x-fal-request-id``); those are waited out (Retry-After) within the deadline. A read
  timeout, a dropped connection, a 502/504 or a 503 from fal itself leave the outcome unknown,
  and are reported instead of retried, so there is never a duplicate billed job. Status and
  result reads are idempotent and are retried with capped backoff. What each status means
  and how long to wait: :mod:`.polling`.
* Every error message names the request id (when there is one), has data URIs shortened and
  the key scrubbed (:mod:`.errors`).

One job from submit to result (polling, cancelling on the way out): :mod:`.client`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar
from urllib.parse import urlsplit

import httpx

from .errors import (AUTH_HINT, FalConfigError, FalError, FalProtocolError, FalServerError, FalTimeoutError, Stopped,
                     error_for, redact)
from .keys import FalKey
from .polling import DONE, FAILED, UNKNOWN, PollPolicy, describe_text, kind_of, reason, retry_after_seconds
from .schemas import AppId
from .transport import USER_AGENT, check_base_url, is_loopback_host, origin, tls_context

log = logging.getLogger("comfyui-sam-kit.fal")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_Calls = TypeVar("_Calls", bound="QueueCalls")


@dataclass
class Submission:
    app: AppId
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    queue_position: Optional[int] = None


@dataclass
class JobStatus:
    state: str  # as the server wrote it: IN_QUEUE / IN_PROGRESS / COMPLETED for fal
    kind: str = UNKNOWN  # polling.QUEUED / RUNNING / DONE / FAILED / UNKNOWN
    queue_position: Optional[int] = None
    logs: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    error: Optional[str] = None
    error_type: Optional[str] = None


class QueueCalls:
    """The queue calls for one base URL and key. Thread-safe; use it as a context manager."""

    def __init__(self, base_url: str, key: Optional[FalKey], *, auth_hint: str = "", connect_timeout: float = 10.0,
                 submit_timeout: float = 60.0, read_timeout: float = 15.0, policy: PollPolicy | None = None):
        self.base_url = check_base_url(base_url)
        self._key = key
        self.auth_hint = auth_hint or AUTH_HINT
        self._origin = origin(self.base_url)
        self.policy = policy or PollPolicy()
        self.connect_timeout = connect_timeout
        self.submit_timeout = submit_timeout
        self.read_timeout = read_timeout
        loopback = is_loopback_host(urlsplit(self.base_url).hostname or "")
        self._http = httpx.Client(
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},  # no Authorization here
            follow_redirects=False,
            trust_env=not loopback,  # a proxy from the environment must not capture loopback traffic
            verify=tls_context(not loopback),
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, key={self._key!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self: _Calls) -> _Calls:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------- plumbing

    def _request_url(self, app: AppId, request_id: str, suffix: str = "") -> str:
        return f"{self.base_url}/{app.queue_app}/requests/{request_id}{suffix}"

    def _trusted(self, url: Any) -> bool:
        """Only URLs on the configured origin may receive the key."""
        if not isinstance(url, str) or not url:
            return False
        try:
            return origin(url) == self._origin
        except ValueError:
            return False

    def _headers(self, extra: Optional[dict] = None) -> dict:
        headers = dict(extra or {})
        if self._key is not None:
            headers["Authorization"] = self._key.authorization()
        return headers

    def _send(self, method: str, url: str, *, timeout: httpx.Timeout | float | None = None, **kw) -> httpx.Response:
        if origin(url) != self._origin:  # last line of defence: the key goes to one origin only
            raise FalConfigError(f"refusing to send the key to {origin(url)[1]}: not the configured queue host")
        headers = self._headers(kw.pop("headers", None))
        return self._http.request(method, url, headers=headers, timeout=timeout or httpx.USE_CLIENT_DEFAULT, **kw)

    def _redact(self, text: Any) -> str:
        return redact(text, self._key)

    def error_for(self, response: httpx.Response, app: AppId, stage: str, request_id: Optional[str]) -> FalError:
        """Map an HTTP error response to the matching :class:`FalError` (see :func:`.errors.error_for`)."""
        return error_for(response, app, stage, request_id, key=self._key, auth_hint=self.auth_hint)

    def _json(self, response: httpx.Response, app: AppId, stage: str, request_id: Optional[str]) -> Any:
        try:
            return response.json()
        except ValueError:
            raise FalProtocolError(
                f"{app.endpoint_id} {stage}: the server answered HTTP {response.status_code} with "
                f"{self._redact(describe_text(response.text))}, not JSON (request {request_id or 'not created'}); is "
                f"the base URL {self.base_url} a fal queue endpoint?", status_code=response.status_code,
                request_id=request_id) from None

    @staticmethod
    def _is_ingress(response: httpx.Response) -> bool:
        # fal's own answers carry x-fal-request-id; a gateway's do not
        return "x-fal-request-id" not in response.headers

    def _retry_wait(self, response: Optional[httpx.Response], attempt: int, deadline: Optional[float], app: AppId,
                    stage: str, request_id: Optional[str]) -> float:
        """Seconds to wait before asking again: the answer's Retry-After, else the back-off.

        A Retry-After longer than the time left (without a deadline: than ``retry_cap``) raises
        the answer's own error now, rather than sleeping past the timeout.
        """
        hinted = retry_after_seconds(response.headers.get("retry-after")) if response is not None else None
        if hinted is None:
            return self.policy.backoff(attempt)
        left = self.policy.retry_cap if deadline is None else deadline - time.monotonic()
        if hinted > left:
            error = self.error_for(response, app, stage, request_id)
            limit = f"the {max(left, 0.0):.1f} s left of the timeout" if deadline is not None else f"{left:g} s"
            error.args = (f"{error.args[0]} The server asks to wait {hinted:g} s (Retry-After), longer than {limit}, "
                          "so the client stopped now instead. Raise the node's timeout, or try again later.",)
            raise error
        return min(self.policy.spread(hinted), max(left, 0.0))

    def _timed_out_busy(self, response: httpx.Response, app: AppId, stage: str, request_id: Optional[str],
                        outcome: str) -> FalTimeoutError:
        error = self.error_for(response, app, stage, request_id)
        return FalTimeoutError(f"The timeout ended while the server kept answering 'not now': {error.args[0]} "
                               f"{outcome}", status_code=error.status_code, request_id=error.request_id,
                               error_type=error.error_type)

    # -------------------------------------------------------------- the four calls

    def submit(self, endpoint_id: str, arguments: dict, *, deadline: Optional[float] = None,
               should_stop: Callable[[], bool] = lambda: False) -> Submission:
        """Create the job. A refused connection is retried ``max_submit_attempts`` times; an answer
        meaning "not accepted" (429, a gateway's 503) is waited out until ``deadline`` (without
        one, ``max_submit_attempts`` times). Nothing else is ever sent twice."""
        app = AppId.parse(endpoint_id)
        url = f"{self.base_url}/{app.endpoint_id}"
        headers = {"Content-Type": "application/json",
                   # ask fal to expire our output files after an hour (they are public URLs)
                   "X-Fal-Object-Lifecycle-Preference": json.dumps({"expiration_duration_seconds": 3600})}
        body = json.dumps(arguments).encode()
        refused = busy = 0
        last_busy: Optional[httpx.Response] = None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                if last_busy is not None:
                    raise self._timed_out_busy(last_busy, app, "submit", None, "Nothing was submitted for this image.")
                raise FalTimeoutError(f"{app.endpoint_id}: the deadline passed before the job could be submitted")
            if remaining is not None:
                # fal drops a job that has not started by then (no billing for a job stuck in the queue)
                headers["X-Fal-Request-Timeout"] = f"{max(remaining, 1.5):.1f}"
            read = self.submit_timeout if remaining is None else max(0.5, min(self.submit_timeout, remaining))
            try:
                response = self._send("POST", url, content=body, headers=headers,
                                      timeout=httpx.Timeout(read, connect=min(self.connect_timeout, read)))
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # nothing reached the server: safe to try again
                refused += 1
                if refused >= self.policy.max_submit_attempts:
                    raise FalServerError(f"{app.endpoint_id} submit: cannot connect to {self.base_url} "
                                         f"({type(exc).__name__}: {self._redact(exc)}); is the server running and "
                                         "the address right?") from None
                self._sleep(self.policy.backoff(refused), deadline, should_stop, None)
                continue
            except httpx.TimeoutException:
                raise FalTimeoutError(
                    f"{app.endpoint_id} submit: no answer within {read:.0f} s. The job may have been created anyway; it "
                    "was NOT submitted again (that could bill twice). Check the request list on your fal dashboard.") from None
            except httpx.TransportError as exc:
                raise FalServerError(
                    f"{app.endpoint_id} submit: the connection failed after the request was sent "
                    f"({type(exc).__name__}); the job may exist, so it was NOT submitted again.") from None
            code = response.status_code
            if code in (200, 201, 202):
                return self._submission(app, response)
            if code == 429 or (code == 503 and self._is_ingress(response)):  # "not accepted": safe to send again
                busy += 1
                if deadline is None and busy >= self.policy.max_submit_attempts:
                    raise self.error_for(response, app, "submit", None)
                last_busy = response
                wait = self._retry_wait(response, busy, deadline, app, "submit", None)
                log.info("SAM Kit fal: %s submit got HTTP %d; trying again in %.1f s", app.endpoint_id, code, wait)
                self._sleep(wait, deadline, should_stop, None)
                continue
            error = self.error_for(response, app, "submit", None)
            if code in (502, 503, 504):  # a 503 here carries fal's request id: fal itself may have taken the job
                error.args = (error.args[0] + " The outcome is unknown, so it was NOT submitted again (that could "
                              "bill twice); check the request list on your fal dashboard.",)
            raise error

    def _submission(self, app: AppId, response: httpx.Response) -> Submission:
        data = self._json(response, app, "submit", response.headers.get("x-fal-request-id"))
        request_id = data.get("request_id") if isinstance(data, dict) else None
        if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
            raise FalProtocolError(f"{app.endpoint_id} submit: the answer has no usable request_id "
                                   f"({self._redact(str(data)[:200])})")

        def pick(name: str, suffix: str) -> str:
            url = data.get(name)
            if self._trusted(url):
                return url
            if url:
                log.warning("SAM Kit fal: ignoring %s on another host (%s); using %s", name,
                            urlsplit(str(url)).hostname, self.base_url)
            return self._request_url(app, request_id, suffix)

        position = data.get("queue_position")
        return Submission(app, request_id, pick("status_url", "/status"), pick("response_url", ""),
                          pick("cancel_url", "/cancel"), position if isinstance(position, int) else None)

    def status(self, sub: Submission, logs: bool = True, *, deadline: Optional[float] = None,
               should_stop: Callable[[], bool] = lambda: False) -> JobStatus:
        response = self._read("GET", sub.status_url, sub, "status", deadline, should_stop,
                              params={"logs": "1" if logs else "0"})
        data = self._json(response, sub.app, "status", sub.request_id)
        state = data.get("status") if isinstance(data, dict) else None
        if not isinstance(state, str) or not state.strip():
            raise FalProtocolError(f"{sub.app.endpoint_id} status: no status in the answer (request "
                                   f"{sub.request_id}): {self._redact(str(data)[:200])}", request_id=sub.request_id)
        kind = kind_of(state)
        # a done job's logs are its normal output; a failed (or unknown) one's may be all the reason there is
        why = reason(data, logs=kind in (FAILED, UNKNOWN)) if kind in (DONE, FAILED, UNKNOWN) else None
        position = data.get("queue_position")
        return JobStatus(
            state=redact(state.strip(), self._key, limit=60),
            kind=kind,
            queue_position=position if isinstance(position, int) else None,
            logs=data.get("logs") if isinstance(data.get("logs"), list) else [],
            metrics=data.get("metrics") if isinstance(data.get("metrics"), dict) else {},
            error=self._redact(why) if why else None,
            error_type=data.get("error_type") if isinstance(data.get("error_type"), str) else None,
        )

    def result(self, sub: Submission, *, deadline: Optional[float] = None,
               should_stop: Callable[[], bool] = lambda: False) -> Optional[Any]:
        """The app's output, or None when the server says it is not ready (HTTP 202)."""
        response = self._read("GET", sub.response_url, sub, "result", deadline, should_stop, app_errors=True)
        if response.status_code == 202:
            return None
        return self._json(response, sub.app, "result", sub.request_id)

    def cancel(self, sub: Submission, timeout: float = 5.0) -> bool:
        """Best effort, one attempt. True when the server accepted the cancellation."""
        try:
            response = self._send("PUT", sub.cancel_url, timeout=timeout)
        except (httpx.HTTPError, FalError) as exc:
            log.warning("SAM Kit fal: cancelling request %s failed: %s", sub.request_id, self._redact(exc))
            return False
        log.info("SAM Kit fal: cancel request %s: HTTP %d", sub.request_id, response.status_code)
        return response.status_code < 300

    def _read(self, method: str, url: str, sub: Submission, stage: str, deadline: Optional[float],
              should_stop: Callable[[], bool], *, app_errors: bool = False, **kw) -> httpx.Response:
        """An idempotent read. Transport errors, 408 and gateway 5xx are retried with back-off,
        ``max_read_failures`` times in a row; 429 is waited out until the deadline (the job is
        still there; without a deadline, ``max_read_failures`` times)."""
        failures = busy = 0
        while True:
            response, problem = None, ""
            try:
                response = self._send(method, url, **kw)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {self._redact(exc)}"
            if response is not None:
                code = response.status_code
                if code < 300:
                    return response
                if code < 400:
                    raise FalProtocolError(f"{sub.app.endpoint_id} {stage}: unexpected redirect (HTTP {code}, request "
                                           f"{sub.request_id}); check the base URL", request_id=sub.request_id)
                if code == 429:
                    busy += 1
                    if deadline is None and busy >= self.policy.max_read_failures:
                        raise self.error_for(response, sub.app, stage, sub.request_id)
                    self._sleep(self._retry_wait(response, busy, deadline, sub.app, stage, sub.request_id), deadline,
                                should_stop, sub)
                    if deadline is not None and time.monotonic() >= deadline:
                        raise self._timed_out_busy(response, sub.app, stage, sub.request_id, "The job was cancelled.")
                    continue
                # A result's 5xx that carries fal's request id is the app's own answer: asking again gives the same.
                transient = code == 408 or (code >= 500 and (not app_errors or self._is_ingress(response)))
                if code == 504 and response.headers.get("x-fal-request-timeout-type") == "user":
                    transient = False
                if not transient:
                    raise self.error_for(response, sub.app, stage, sub.request_id)
                problem = f"HTTP {code}"
            failures += 1
            if failures >= self.policy.max_read_failures or (deadline is not None and time.monotonic() >= deadline):
                if response is not None:
                    error = self.error_for(response, sub.app, stage, sub.request_id)
                    error.args = (f"{error.args[0]} (asked {failures} times)",)
                    raise error
                raise FalServerError(f"{sub.app.endpoint_id} {stage}: giving up after {failures} failed attempts "
                                     f"(request {sub.request_id}): {problem}", request_id=sub.request_id)
            log.info("SAM Kit fal: %s of request %s failed (%s); trying again", stage, sub.request_id, problem)
            self._sleep(self._retry_wait(response, failures, deadline, sub.app, stage, sub.request_id), deadline,
                        should_stop, sub)

    # -------------------------------------------------------------- waiting

    def _sleep(self, seconds: float, deadline: Optional[float], should_stop: Callable[[], bool],
               sub: Optional[Submission]) -> None:
        """Sleep in short slices; on ``should_stop()`` cancel ``sub`` and raise :class:`Stopped`.

        Returns early when the deadline passes (the caller decides what that means).
        """
        end = time.monotonic() + seconds
        while True:
            if should_stop():
                if sub is not None:
                    self.cancel(sub)
                raise Stopped(sub.request_id if sub else None)
            now = time.monotonic()
            if now >= end or (deadline is not None and now >= deadline):
                return
            time.sleep(min(self.policy.stop_check_interval, end - now))
