"""When the queue client asks again, and what a queue's status answer means.

Pure policy, no I/O: :mod:`.calls` and :mod:`.client` do the requests and raise the errors. The rules
(README "Remote nodes" states them for users):

* **Status polls** start at ``first_interval`` (0.1 s, the rate fal's own clients poll at) and
  grow ×1.5 up to 2 s while queued and 1 s while running; a change of state starts again at
  0.1 s, so a short job is seen finishing quickly and a long one is polled rarely.
* **Status strings** (compared case-insensitively) fall in four kinds. *Pending*: fal's
  ``IN_QUEUE`` / ``IN_PROGRESS`` and the ``QUEUED`` / ``PENDING`` / ``RUNNING`` / ``PROCESSING``
  / ``STARTING`` other queue APIs use (Replicate, RunPod). *Done*: ``COMPLETED`` (fal; a failed
  fal job ends so too and its error comes with the result) and ``OK`` / ``SUCCEEDED`` /
  ``SUCCESS``: the result is fetched. *Failed*: ``FAILED``, ``ERROR``, ``CANCELLED`` /
  ``CANCELED``, ``CANCELLATION_REQUESTED``, ``TIMED_OUT``, ``EXPIRED``… (fal's webhook and
  cancel answers, RunPod, Replicate): polling ends at once with the server's own reason.
  *Unknown*: polled on with the same back-off; after ``max_unknown_polls`` such answers in a
  row (about 2 s) the client gives the job up, cancels it and says which status it got.
* **After a done status**, a result that answers "not ready" (202) is asked again with the same
  growing interval at most ``max_result_waits`` times (about 2 s), unless the status already
  carried an error: then that error is reported at once.
* **Transient read failures** (transport errors, 408, 5xx) wait ``retry_base``·2^(n-1) s, capped
  at ``retry_cap``, ×0.75–1.25 jitter, at most ``max_read_failures`` times in a row.
* **Back-pressure** (429, and a 503 from a gateway at submit: both mean "not accepted") waits
  ``Retry-After`` (seconds, or an HTTP date) +0–10 % spread, else the back-off above, for as
  long as the node's timeout allows; a Retry-After longer than the time left fails at once.
  A 429 on a status or result read is waited out the same way: the job is still there.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import time
from dataclasses import dataclass
from datetime import timezone
from typing import Any, Optional

QUEUED, RUNNING, DONE, FAILED, UNKNOWN = "queued", "running", "done", "failed", "unknown"

_KINDS = {
    **dict.fromkeys(("IN_QUEUE", "QUEUED", "PENDING"), QUEUED),
    **dict.fromkeys(("IN_PROGRESS", "RUNNING", "PROCESSING", "STARTING", "STARTED"), RUNNING),
    **dict.fromkeys(("COMPLETED", "OK", "SUCCEEDED", "SUCCESS"), DONE),
    **dict.fromkeys(("FAILED", "FAILURE", "ERROR", "ERRORED", "CANCELLED", "CANCELED", "CANCELLATION_REQUESTED",
                     "ABORTED", "REJECTED", "TIMEOUT", "TIMED_OUT", "EXPIRED", "NOT_FOUND"), FAILED),
}
#: the state names progress displays know, for the pending kinds
FAL_STATE = {QUEUED: "IN_QUEUE", RUNNING: "IN_PROGRESS"}
_ERROR_LEVELS = ("ERROR", "CRITICAL", "FATAL", "STDERR")


def kind_of(state: str) -> str:
    """One of QUEUED, RUNNING, DONE, FAILED, UNKNOWN for a status string."""
    return _KINDS.get(state.strip().upper().replace("-", "_").replace(" ", "_"), UNKNOWN)


@dataclass
class PollPolicy:
    first_interval: float = 0.1
    max_queue_interval: float = 2.0
    max_progress_interval: float = 1.0
    growth: float = 1.5
    #: consecutive failed status/result reads (transport errors, 408, 5xx) before giving up
    max_read_failures: int = 8
    #: submits refused by a failed connection; also 429s tolerated when there is no deadline
    max_submit_attempts: int = 4
    #: back-off of retries without a Retry-After: retry_base·2^(n-1) s, at most retry_cap s
    retry_base: float = 0.25
    retry_cap: float = 5.0
    #: Retry-After waits are stretched by up to this fraction, so a batch does not retry in step
    retry_after_spread: float = 0.1
    #: status answers in a row with a state this client does not know before it gives up (~2 s)
    max_unknown_polls: int = 6
    #: "not ready" result answers after a done status before giving up (~2 s)
    max_result_waits: int = 6
    stop_check_interval: float = 0.1

    def next_interval(self, interval: float, kind: str) -> float:
        cap = self.max_progress_interval if kind in (RUNNING, DONE) else self.max_queue_interval
        return min(cap, interval * self.growth)

    def backoff(self, attempt: int) -> float:
        """Seconds before retry number ``attempt`` (1-based) when the server gave no Retry-After."""
        return min(self.retry_cap, self.retry_base * 2 ** (max(attempt, 1) - 1)) * random.uniform(0.75, 1.25)

    def spread(self, retry_after: float) -> float:
        return retry_after * random.uniform(1.0, 1.0 + self.retry_after_spread)


def retry_after_seconds(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds a ``Retry-After`` header asks for (RFC 9110 §10.2.3: delay-seconds or an
    HTTP-date; decimals are accepted too), 0 for a date in the past, None when absent or unreadable."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


# ------------------------------------------------------------------ what the server said


def _field_errors(items: list) -> str:
    parts = []
    for item in items:
        if isinstance(item, dict) and "msg" in item:
            loc = [str(p) for p in item.get("loc", []) if p != "body"]
            parts.append(f"{'.'.join(loc) or 'input'}: {item.get('msg', '')}")
        else:
            parts.append(reason(item) or json.dumps(item, default=str))
    return "; ".join(p for p in parts if p)


def reason(body: Any, *, logs: bool = False) -> Optional[str]:
    """The server's own words for a failure, from any shape seen: ``detail`` (a string, or fal's
    ``[{loc, msg, type}]`` list), ``error`` (a string, or nested ``{"message": ...}``),
    ``message``, ``error_message``, ``reason``; with ``logs``, error-level lines of ``logs`` (else
    its last line). None when there is none."""
    if isinstance(body, str):
        return body.strip() or None
    if isinstance(body, list):
        return _field_errors(body) or None
    if not isinstance(body, dict):
        return None
    for name in ("detail", "error", "message", "error_message", "reason", "msg"):
        text = reason(body.get(name))
        if text:
            return text
    entries = body.get("logs") if logs else None
    if isinstance(entries, list):
        lines = [(str(e.get("level", "")).upper(), str(e.get("message", "")).strip()) for e in entries
                 if isinstance(e, dict) and e.get("message")]
        errors = [text for level, text in lines if level in _ERROR_LEVELS]
        if errors:
            return "; ".join(errors[-3:])
        if lines:
            return f"last log line: {lines[-1][1]}"
    return None


def error_fields(body: Any) -> tuple[str, Optional[str], list]:
    """(message, error_type, field errors) from an HTTP error body in any of fal's shapes."""
    if not isinstance(body, dict):
        return (reason(body) or json.dumps(body, default=str)), None, []
    detail = body.get("detail")
    errors = [item for item in detail if isinstance(item, dict)] if isinstance(detail, list) else []
    error_type = body.get("error_type") if isinstance(body.get("error_type"), str) else None
    return (reason(body) or json.dumps(body, default=str)), error_type, errors


def describe_text(text: str) -> str:
    """What a body that is not JSON looks like, for a message: an HTML page's title, else its start."""
    lowered = text.lower()
    if "<html" in lowered or "<!doctype html" in lowered:
        start, end = lowered.find("<title>"), lowered.find("</title>")
        title = text[start + 7:end].strip() if 0 <= start < end else ""
        return f"an HTML page{f' titled {title!r}' if title else ''}"
    return repr(text[:200]) if text.strip() else "an empty body"
