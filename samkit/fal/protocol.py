"""fal's queue protocol over httpx (sync): submit, poll, result, cancel, and result downloads.

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
  client that has no key at all, with a size cap.
* Plain ``http://`` is refused unless the host is a loopback address.
* A submit is re-sent only when it provably did not create a job: the connection was never
  made, or the answer was 429 (rate/concurrency limit) or an ingress 503 (no
  ``x-fal-request-id``); those are waited out (Retry-After) within the deadline. A read
  timeout, a dropped connection, a 502/504 or a 503 from fal itself leave the outcome unknown,
  and are reported instead of retried, so there is never a duplicate billed job. Status and
  result reads are idempotent and are retried with capped backoff. What each status means
  and how long to wait: :mod:`.polling`.
* Every error message names the request id (when there is one), has data URIs shortened and
  the key scrubbed.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import httpx

from .. import __version__
from .keys import FalKey
from .polling import (DONE, FAILED, FAL_STATE, UNKNOWN, PollPolicy, describe_text, error_fields, kind_of, reason,
                      retry_after_seconds)
from .schemas import AppId, decode_data_uri

log = logging.getLogger("comfyui-sam-kit.fal")

USER_AGENT = f"comfyui-sam-kit/{__version__}"
MAX_MESSAGE_CHARS = 600
DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024

_DATA_URI_TEXT = re.compile(r"data:[A-Za-z0-9.+/-]*(?:;[A-Za-z0-9=._+-]+)*,[A-Za-z0-9+/=%_-]{24,}")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


# ------------------------------------------------------------------ errors


class FalError(RuntimeError):
    """A remote job failed. ``request_id`` names it on fal's dashboard (or the server's log)."""

    def __init__(self, message: str, *, status_code: Optional[int] = None, request_id: Optional[str] = None,
                 error_type: Optional[str] = None):
        super().__init__(message)
        self.status_code = status_code
        self.request_id = request_id
        self.error_type = error_type


class FalConfigError(FalError):
    """The base URL (or another setting) is unusable."""


class FalAuthError(FalError):
    """401: the key is missing, malformed or unknown."""


class FalAccountError(FalError):
    """403: the account is locked (exhausted balance, admin lock) or may not use the app."""


class FalNotFoundError(FalError):
    """404: no such app, or the request expired / is unknown."""


class FalValidationError(FalError):
    """422: the inputs were refused (at submit, or by the app when the result was fetched)."""

    def __init__(self, message: str, *, errors: Optional[list] = None, **kw):
        super().__init__(message, **kw)
        self.errors = errors or []


class FalRateLimitError(FalError):
    """429: rate or concurrency limit."""


class FalServerError(FalError):
    """5xx, or an outcome the client could not learn."""


class FalTimeoutError(FalError):
    """The job did not finish within the deadline (it was cancelled), or a call timed out."""


class FalJobFailedError(FalError):
    """The job ended without a result: a FAILED / ERROR / CANCELLED… status, or COMPLETED with an error."""


class FalProtocolError(FalError):
    """The server answered something that is not fal's protocol."""


class FalDownloadError(FalError):
    """The result file could not be fetched or is not an image."""


class Stopped(Exception):
    """Polling stopped because ``should_stop`` said so (interrupt, or a sibling job failed).

    The remote job has been sent a cancel by then.
    """

    def __init__(self, request_id: Optional[str]):
        super().__init__(f"stopped (request {request_id or 'not submitted'}; cancel sent)")
        self.request_id = request_id


# ------------------------------------------------------------------ text hygiene


def redact(text: Any, key: Optional[FalKey] = None, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Text safe to show: data URIs shortened, the key scrubbed, length capped, one line."""
    text = str(text)
    if key is not None:
        text = key.scrub(text)
    text = _DATA_URI_TEXT.sub(lambda m: m.group(0)[:40] + f"…[data URI, {len(m.group(0))} chars]", text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


# ------------------------------------------------------------------ URLs


def is_loopback_host(host: str) -> bool:
    host = (host or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def check_base_url(base_url: str) -> str:
    """The base URL without a trailing slash, or :class:`FalConfigError` if it is unsafe."""
    base = (base_url or "").strip().rstrip("/")
    try:
        parts = urlsplit(base)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise FalConfigError(f"base URL {base_url!r} is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise FalConfigError(f"base URL {base_url!r} must be an https:// URL (e.g. https://queue.fal.run)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise FalConfigError("base URL must not contain credentials, a query or a fragment; the key is read from "
                             "FAL_KEY or the config file")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise FalConfigError(f"base URL {base!r} uses plain http; the key would travel unencrypted. Use https://, "
                             "or http:// only for a server on this machine (127.0.0.1, ::1, localhost)")
    return base


# ------------------------------------------------------------------ data


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


@dataclass
class Update:
    """What a job is doing, for progress displays."""

    request_id: Optional[str]
    state: str  # SUBMITTING, IN_QUEUE, IN_PROGRESS, COMPLETED, FETCHING
    queue_position: Optional[int] = None
    new_logs: list = field(default_factory=list)


# ------------------------------------------------------------------ the client


@functools.lru_cache(maxsize=2)
def _tls_context(trust_env: bool):
    # Building a verifying SSL context loads the CA bundle (~25 ms); every node run makes a new
    # client, so the context, which is safe to share between clients and threads, is made once.
    return httpx.create_ssl_context(trust_env=trust_env)


class FalClient:
    """A queue client for one base URL and key. Thread-safe; use it as a context manager."""

    def __init__(self, base_url: str, key: Optional[FalKey], *, auth_hint: str = "", connect_timeout: float = 10.0,
                 submit_timeout: float = 60.0, read_timeout: float = 15.0, policy: PollPolicy | None = None):
        self.base_url = check_base_url(base_url)
        self._key = key
        self.auth_hint = auth_hint or ("Check FAL_KEY (format key_id:key_secret) or the key in your fal.ini; keys "
                                       "are at https://fal.ai/dashboard/keys.")
        self._origin = _origin(self.base_url)
        self.policy = policy or PollPolicy()
        self.connect_timeout = connect_timeout
        self.submit_timeout = submit_timeout
        self.read_timeout = read_timeout
        loopback = is_loopback_host(urlsplit(self.base_url).hostname or "")
        self._http = httpx.Client(
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},  # no Authorization here
            follow_redirects=False,
            trust_env=not loopback,  # a proxy from the environment must not capture loopback traffic
            verify=_tls_context(not loopback),
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        )

    def __repr__(self) -> str:
        return f"FalClient({self.base_url!r}, key={self._key!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "FalClient":
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
            return _origin(url) == self._origin
        except ValueError:
            return False

    def _headers(self, extra: Optional[dict] = None) -> dict:
        headers = dict(extra or {})
        if self._key is not None:
            headers["Authorization"] = self._key.authorization()
        return headers

    def _send(self, method: str, url: str, *, timeout: httpx.Timeout | float | None = None, **kw) -> httpx.Response:
        if _origin(url) != self._origin:  # last line of defence: the key goes to one origin only
            raise FalConfigError(f"refusing to send the key to {_origin(url)[1]}: not the configured queue host")
        headers = self._headers(kw.pop("headers", None))
        return self._http.request(method, url, headers=headers, timeout=timeout or httpx.USE_CLIENT_DEFAULT, **kw)

    def _redact(self, text: Any) -> str:
        return redact(text, self._key)

    def error_for(self, response: httpx.Response, app: AppId, stage: str, request_id: Optional[str]) -> FalError:
        """Map an HTTP error response to the matching :class:`FalError`."""
        code = response.status_code
        request_id = request_id or response.headers.get("x-fal-request-id")
        try:
            body = response.json()
        except ValueError:
            body = None
        if body is None:
            text = response.text
            detail = (f"{describe_text(text)} (from a proxy or gateway, not the queue)" if "<html" in text.lower()
                      else (text or response.reason_phrase))
            error_type, errors = None, []
        else:
            detail, error_type, errors = error_fields(body)
        error_type = error_type or response.headers.get("x-fal-error-type")
        where = f"{app.endpoint_id} {stage} failed (HTTP {code}, request {request_id or 'not created'})"
        detail = self._redact(detail)
        kw = dict(status_code=code, request_id=request_id, error_type=error_type)
        if code == 401:
            return FalAuthError(f"{where}: the key was refused: {detail}. {self.auth_hint}", **kw)
        if code == 403:
            return FalAccountError(f"{where}: access denied: {detail}. If it says 'User is locked', top up the balance "
                                   "at https://fal.ai/dashboard/billing (or contact fal support); otherwise this key "
                                   "may not use this app.", **kw)
        if code == 404:
            what = "no such endpoint on this server" if stage == "submit" else "the request is unknown or its result expired"
            return FalNotFoundError(f"{where}: {what}: {detail}", **kw)
        if code == 422:
            return FalValidationError(f"{where}: the inputs were refused: {detail}", errors=errors, **kw)
        if code == 429:
            return FalRateLimitError(f"{where}: rate or concurrency limit reached: {detail}. Wait, or lower the "
                                     "number of jobs running at once.", **kw)
        if code == 504 and response.headers.get("x-fal-request-timeout-type") == "user":
            return FalTimeoutError(f"{where}: the job did not start before its deadline: {detail}", **kw)
        if code >= 500:
            extra = f" [{error_type}]" if error_type else ""
            return FalServerError(f"{where}: server error{extra}: {detail}. Usually temporary; run again later.", **kw)
        return FalError(f"{where}: {detail}", **kw)

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

    def run(self, endpoint_id: str, arguments: dict, *, timeout: float = 300.0,
            should_stop: Callable[[], bool] = lambda: False,
            on_update: Callable[[Update], None] = lambda u: None) -> tuple[str, Any]:
        """Submit, wait and fetch: ``(request_id, output)``.

        When ``should_stop()`` turns true the remote job is cancelled and :class:`Stopped` is
        raised; when ``timeout`` seconds pass it is cancelled and :class:`FalTimeoutError` raised.
        A job that ends without a result raises :class:`FalJobFailedError` (or the result's own
        error) with the server's reason and the request id.
        """
        deadline = time.monotonic() + timeout
        on_update(Update(None, "SUBMITTING"))
        if should_stop():
            raise Stopped(None)
        sub = self.submit(endpoint_id, arguments, deadline=deadline, should_stop=should_stop)
        log.info("SAM Kit fal: %s request %s submitted", endpoint_id, sub.request_id)
        on_update(Update(sub.request_id, "IN_QUEUE", sub.queue_position))
        try:
            final = self._wait(sub, deadline, timeout, should_stop, on_update)
        except (Stopped, FalNotFoundError):
            raise  # cancelled already, or there is no job left to cancel
        except BaseException:
            self.cancel(sub)  # we are walking away from a job that may still run (and bill)
            raise
        if final.kind == FAILED:
            self._raise_failed(sub, final, deadline, should_stop)
        on_update(Update(sub.request_id, "FETCHING"))
        return sub.request_id, self._fetch(sub, final, deadline, timeout, should_stop)

    def _check_deadline(self, sub: Submission, deadline: float, timeout: float) -> None:
        if time.monotonic() >= deadline:
            raise FalTimeoutError(f"{sub.app.endpoint_id}: request {sub.request_id} did not finish within {timeout:g} s "
                                  "and was cancelled. Raise the node's timeout, or try again when the queue is shorter.",
                                  request_id=sub.request_id)

    def _wait(self, sub: Submission, deadline: float, timeout: float, should_stop: Callable[[], bool],
              on_update: Callable[[Update], None]) -> JobStatus:
        """Poll until the status is done or failed (returned). Raises on the deadline and after
        ``max_unknown_polls`` unknown states in a row (the caller cancels the job)."""
        interval, last_kind, seen_logs, unknown, started = self.policy.first_interval, "", 0, 0, time.monotonic()
        while True:
            self._sleep(interval, deadline, should_stop, sub)
            self._check_deadline(sub, deadline, timeout)
            status = self.status(sub, deadline=deadline, should_stop=should_stop)
            new_logs = status.logs[seen_logs:]
            seen_logs = max(seen_logs, len(status.logs))
            if status.kind != last_kind and last_kind:
                interval = self.policy.first_interval
            last_kind = status.kind
            on_update(Update(sub.request_id, FAL_STATE.get(status.kind, status.state), status.queue_position, new_logs))
            if status.kind in (DONE, FAILED):
                return status
            unknown = unknown + 1 if status.kind == UNKNOWN else 0
            if unknown >= self.policy.max_unknown_polls:
                said = f" The server's message: {status.error}" if status.error else ""
                raise FalProtocolError(
                    f"{sub.app.endpoint_id} status: request {sub.request_id} reports status {status.state!r}, which is "
                    f"not a queue state this client knows (fal's are IN_QUEUE, IN_PROGRESS, COMPLETED); gave up after "
                    f"{unknown} such answers in {time.monotonic() - started:.1f} s and cancelled it.{said}",
                    request_id=sub.request_id)
            interval = self.policy.next_interval(interval, status.kind)

    def _raise_failed(self, sub: Submission, status: JobStatus, deadline: float,
                      should_stop: Callable[[], bool]) -> None:
        why = status.error
        if not why:  # some servers give the reason only with the result: ask once (an error answer raises)
            output = self.result(sub, deadline=deadline, should_stop=should_stop)
            why = self._redact(reason(output)) if reason(output) else None
        kind = f" [{status.error_type}]" if status.error_type else ""
        raise FalJobFailedError(f"{sub.app.endpoint_id}: request {sub.request_id} ended with status "
                                f"{status.state}{kind}: {why or 'the server gave no reason'}",
                                request_id=sub.request_id, error_type=status.error_type)

    def _fetch(self, sub: Submission, status: JobStatus, deadline: float, timeout: float,
               should_stop: Callable[[], bool]) -> Any:
        """The output after a done status. "Not ready" is asked again ``max_result_waits`` times
        at most, with a growing interval; not at all when the status carried an error."""
        interval, started = self.policy.first_interval, time.monotonic()
        for attempt in range(1, self.policy.max_result_waits + 1):
            output = self.result(sub, deadline=deadline, should_stop=should_stop)
            if output is not None:
                return output
            if status.error:
                kind = f" [{status.error_type}]" if status.error_type else ""
                raise FalJobFailedError(f"{sub.app.endpoint_id}: request {sub.request_id} ended {status.state} with an "
                                        f"error{kind}: {status.error}", request_id=sub.request_id,
                                        error_type=status.error_type)
            if attempt < self.policy.max_result_waits:
                self._sleep(interval, deadline, should_stop, sub)
                if time.monotonic() >= deadline:
                    raise FalTimeoutError(f"{sub.app.endpoint_id}: the result of request {sub.request_id} was not "
                                          f"ready within {timeout:g} s", request_id=sub.request_id)
                interval = self.policy.next_interval(interval, DONE)
        raise FalProtocolError(
            f"{sub.app.endpoint_id} result: request {sub.request_id} is {status.state}, but its result answered 'not "
            f"ready' {self.policy.max_result_waits} times in {time.monotonic() - started:.1f} s; the server may have "
            "lost it. Run the node again.", request_id=sub.request_id)


class ResultDownloader:
    """Fetches result files without any credentials: https (any host) and ``data:`` URIs; plain
    http only from loopback, and only when ``allow_loopback_http`` (the queue itself is on this
    machine), so a result URL from a remote service cannot make us probe local ports. Redirects
    are followed by hand (at most 5), each hop checked the same way.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES, timeout: float = 60.0,
                 allow_loopback_http: bool = False):
        self.max_bytes = max_bytes
        self.allow_loopback_http = allow_loopback_http
        self._lock = threading.Lock()
        self._clients: dict[bool, httpx.Client] = {}
        self.timeout = timeout

    def _client(self, loopback: bool) -> httpx.Client:
        with self._lock:
            if loopback not in self._clients:
                self._clients[loopback] = httpx.Client(headers={"User-Agent": USER_AGENT}, follow_redirects=False,
                                                       trust_env=not loopback, verify=_tls_context(not loopback),
                                                       timeout=httpx.Timeout(self.timeout, connect=10.0))
            return self._clients[loopback]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def __enter__(self) -> "ResultDownloader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fetch(self, url: str, request_id: Optional[str] = None) -> bytes:
        where = f"result file of request {request_id or '?'}"
        if url.startswith("data:"):
            try:
                return decode_data_uri(url, self.max_bytes)[1]
            except ValueError as exc:
                raise FalDownloadError(f"{where}: {exc}", request_id=request_id) from None
        for _hop in range(6):
            parts = urlsplit(url)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise FalDownloadError(f"{where}: unsupported URL {redact(url, limit=120)}", request_id=request_id)
            loopback = is_loopback_host(parts.hostname)
            if parts.scheme == "http" and not (loopback and self.allow_loopback_http):
                raise FalDownloadError(f"{where}: refusing plain http from {parts.hostname} (result files must come "
                                       "over https, or from this machine when the server runs here)",
                                       request_id=request_id)
            try:
                with self._client(loopback).stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = str(response.url.join(response.headers["location"]))
                        continue
                    if response.status_code != 200:
                        raise FalDownloadError(f"{where}: HTTP {response.status_code} from {parts.hostname} "
                                               "(results expire soon after the job; run again)",
                                               status_code=response.status_code, request_id=request_id)
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self.max_bytes:
                        raise FalDownloadError(f"{where}: {int(declared)} bytes is over the {self.max_bytes}-byte limit",
                                               request_id=request_id)
                    chunks, total = [], 0
                    for chunk in response.iter_bytes():
                        total += len(chunk)
                        if total > self.max_bytes:
                            raise FalDownloadError(f"{where}: larger than the {self.max_bytes}-byte limit",
                                                   request_id=request_id)
                        chunks.append(chunk)
                    return b"".join(chunks)
            except httpx.HTTPError as exc:
                raise FalDownloadError(f"{where}: download from {parts.hostname} failed ({type(exc).__name__})",
                                       request_id=request_id) from None
        raise FalDownloadError(f"{where}: too many redirects", request_id=request_id)
