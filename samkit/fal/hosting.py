"""Running a :class:`.server.FalServer`: :class:`BackgroundServer` on its own thread and event
loop (for embedding and tests), and :func:`serve` in the foreground until SIGINT/SIGTERM
(``python -m samkit serve``, see :mod:`.cli`)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Optional

from aiohttp import web

from .server import FalServer

log = logging.getLogger("comfyui-sam-kit.fal.server")


class BackgroundServer:
    """Runs a :class:`FalServer` on its own thread and event loop (for embedding and tests)."""

    def __init__(self, server: FalServer, host: str = "127.0.0.1", port: int = 0):
        self.server, self.host, self.port = server, host, port
        self.base_url: Optional[str] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner: Optional[web.AppRunner] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None

    def start(self, timeout: float = 10.0) -> str:
        self._thread = threading.Thread(target=self._main, name="samkit-fal-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the server did not start in time")
        if self._error is not None:
            raise self._error
        return self.base_url

    def _main(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = web.AppRunner(self.server.make_app(), access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            self._loop.run_until_complete(site.start())
            host, port = self._runner.addresses[0][:2]
            self.base_url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        except BaseException as exc:  # report start-up failures to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


async def serve(server: FalServer, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM. Logs the address actually bound (``--port 0`` picks a free one)."""
    import signal

    runner = web.AppRunner(server.make_app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        log.info("serving %s at http://%s:%d (%d worker(s)); stop with Ctrl+C", ", ".join(sorted(server.handlers)),
                 shown, bound_port, server.settings.workers)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # Windows: Ctrl+C arrives as KeyboardInterrupt
                pass
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
