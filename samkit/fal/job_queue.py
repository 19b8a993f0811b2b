"""The self-hosted server's job queue on an asyncio loop: N workers run handlers on a thread
pool, jobs wait in order (0-based positions), a queued job can be dropped and a running one
told to stop at its next check, a job not started before its ``X-Fal-Request-Timeout`` fails
with 504 at that deadline (a timer on the loop, not when a worker reaches it), and results
(records and PNG files) are kept for ``result_ttl`` seconds.

Job records and files are written only on the event loop's thread, never by workers. The HTTP
surface on top is :class:`.server.FalServer`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from .jobs import Handler, Job, JobFailed, ServerSettings, install_job_hooks, run_job

log = logging.getLogger("comfyui-sam-kit.fal.server")


class JobQueue:
    """Jobs for ``handlers`` (endpoint id → handler), run as ``settings`` say.

    Call :meth:`start_workers` and :meth:`stop_workers` on the event loop that serves it.
    """

    def __init__(self, handlers: dict[str, Handler], settings: ServerSettings):
        self.handlers = dict(handlers)
        self.settings = settings
        self.jobs: dict[str, Job] = {}
        self.files: dict[str, tuple[bytes, float]] = {}  # file id → (png, expires at)
        self._pending: collections.deque[Job] = collections.deque()
        self._paused = False
        self._cond: Optional[asyncio.Condition] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._pool: Optional[ThreadPoolExecutor] = None
        self._tasks: list[asyncio.Task] = []

    async def start_workers(self) -> None:
        install_job_hooks()
        self._loop = asyncio.get_running_loop()
        self._cond = asyncio.Condition()
        self._pool = ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="samkit-serve")
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.settings.workers)]
        self._tasks.append(asyncio.create_task(self._janitor()))

    async def stop_workers(self) -> None:
        for job in self.jobs.values():
            job.cancel_requested.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -------------------------------------------------------------- jobs in and out

    @property
    def queued(self) -> int:
        """Jobs waiting for a worker."""
        return len(self._pending)

    def queue_position(self, job: Job) -> int:
        """0-based place of a queued job (0 when a worker has just taken it)."""
        try:
            return self._pending.index(job)
        except ValueError:  # just taken by a worker
            return 0

    async def enqueue(self, job: Job) -> int:
        """Record ``job`` and queue it; its 0-based position."""
        self.jobs[job.id] = job
        async with self._cond:
            self._pending.append(job)
            position = len(self._pending) - 1
            self._cond.notify()
        if job.start_by is not None:  # loop.time() is time.monotonic(), the clock start_by is on
            self._loop.call_at(job.start_by, self._start_deadline, job)
        return position

    def _start_deadline(self, job: Job) -> None:
        """``X-Fal-Request-Timeout`` passed: a job still waiting fails now (fal's 504, type ``user``)."""
        if job in self._pending:
            self._pending.remove(job)
            self._fail(job, 504, "The request did not start before its X-Fal-Request-Timeout", "request_timeout")

    def on_finished(self, job: Job) -> None:
        """Called on the loop's thread once ``job`` is COMPLETED (the server delivers webhooks here)."""

    async def cancel_job(self, job: Job) -> None:
        """Tell a running job to stop; drop a queued one (it ends cancelled at once)."""
        job.cancel_requested.set()
        async with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                self._fail(job, 400, "Request was cancelled", "request_cancelled")

    def pause(self) -> None:
        """Stop starting jobs (queued ones wait). Thread-safe."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._notify_all(), self._loop)

    async def _notify_all(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    # -------------------------------------------------------------- workers

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            async with self._cond:
                await self._cond.wait_for(lambda: self._pending and not self._paused)
                job = self._pending.popleft()
                job.state = "IN_PROGRESS"
                job.started = time.monotonic()
            if job.start_by is not None and job.started > job.start_by:
                self._fail(job, 504, "The request did not start before its X-Fal-Request-Timeout", "request_timeout")
                continue
            # Job records and files are written here, on the event loop's thread, never by workers.
            try:
                handler = self.handlers[job.endpoint_id]
                png, width, height = await loop.run_in_executor(self._pool, run_job, job, handler, self.settings)
            except JobFailed as failed:
                self._fail(job, failed.status, failed.message, failed.error_type, failed.body)
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # run_job handles its own errors; this guards the worker loop itself
                log.exception("worker failed on %s", job.id)
                self._fail(job, 500, "Internal server error", "internal_error")
                continue
            file_id = secrets.token_urlsafe(18)
            self.files[file_id] = (png, time.monotonic() + self.settings.result_ttl)
            job.output = (file_id, width, height, len(png))
            job.log(f"done: {width}x{height} image")
            self._finish(job)

    def _fail(self, job: Job, status: int, message: str, error_type: str, body: Optional[dict] = None) -> None:
        job.failure = (status, body or {"detail": message, "error_type": error_type})
        job.error, job.error_type = message, error_type
        self._finish(job)

    def _finish(self, job: Job) -> None:
        job.finished = time.monotonic()
        if job.started is not None:
            job.metrics = {"inference_time": round(job.finished - job.started, 4)}
        job.state = "COMPLETED"  # last: readers see a complete record
        self.on_finished(job)

    async def _janitor(self) -> None:
        period = min(max(self.settings.result_ttl / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for job_id, job in list(self.jobs.items()):
                if job.state == "COMPLETED" and job.finished is not None and job.finished + self.settings.result_ttl < now:
                    del self.jobs[job_id]
                    if job.output is not None:
                        self.files.pop(job.output[0], None)
            for file_id, (_png, expires) in list(self.files.items()):
                if expires < now:
                    self.files.pop(file_id, None)

