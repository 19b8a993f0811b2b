"""What goes wrong with a remote job, said safely: the error classes, redaction, and the
mapping from an HTTP error answer to the matching error.

Every message names the request id (when there is one), has data URIs shortened and the key
scrubbed (:func:`redact`). The self-hosted server uses :func:`redact` for its messages too.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Optional

from .polling import describe_text, error_fields

if TYPE_CHECKING:  # types only: the server side uses redact() without loading the client's HTTP stack
    import httpx

    from .keys import FalKey
    from .schemas import AppId

MAX_MESSAGE_CHARS = 600

_DATA_URI_TEXT = re.compile(r"data:[A-Za-z0-9.+/-]*(?:;[A-Za-z0-9=._+-]+)*,[A-Za-z0-9+/=%_-]{24,}")

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


# ------------------------------------------------------------------ HTTP answers

AUTH_HINT = ("Check FAL_KEY (format key_id:key_secret) or the key in your fal.ini; keys are at "
             "https://fal.ai/dashboard/keys.")


def error_for(response: httpx.Response, app: AppId, stage: str, request_id: Optional[str], *,
              key: Optional[FalKey] = None, auth_hint: str = AUTH_HINT) -> FalError:
    """Map an HTTP error response to the matching :class:`FalError` (message redacted with ``key``)."""
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
    detail = redact(detail, key)
    kw = dict(status_code=code, request_id=request_id, error_type=error_type)
    if code == 401:
        return FalAuthError(f"{where}: the key was refused: {detail}. {auth_hint}", **kw)
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
