"""The fal queue client: one job from submit to result (:meth:`FalClient.run`).

It submits, polls the status on :mod:`.polling`'s schedule, reports progress (:class:`Update`),
fetches the output, and cancels the remote job whenever it walks away from it (stop, timeout,
an error). The calls themselves, their retries and the key's safety rules
are :class:`.calls.QueueCalls`; result files are fetched by :mod:`.downloads`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .calls import JobStatus, QueueCalls, Submission
from .errors import FalJobFailedError, FalNotFoundError, FalProtocolError, FalTimeoutError, Stopped
from .polling import DONE, FAILED, FAL_STATE, UNKNOWN, reason

log = logging.getLogger("comfyui-sam-kit.fal")


@dataclass
class Update:
    """What a job is doing, for progress displays."""

    request_id: Optional[str]
    state: str  # SUBMITTING, IN_QUEUE, IN_PROGRESS, COMPLETED, FETCHING
    queue_position: Optional[int] = None
    new_logs: list = field(default_factory=list)


class FalClient(QueueCalls):
    """A queue client for one base URL and key: :meth:`run` on top of :class:`.calls.QueueCalls`'
    submit/status/result/cancel. Thread-safe; use it as a context manager."""

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

