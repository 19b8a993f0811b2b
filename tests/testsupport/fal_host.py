"""ComfyUI's side of ``samkit.runtime``, as ``nodes/comfy_bridge.py`` installs it, for node tests.

``FakeComfyHost(monkeypatch)`` behaves like ComfyUI's executing thread: ``interrupted()`` reads a
flag (``processing_interrupted``), ``check_interrupt()`` clears it and raises
:class:`InterruptProcessingException` (``throw_exception_if_processing_interrupted``), progress
bars and status texts are recorded. Only calls from the thread that created it count: calls
from other threads (the in-process test server's job threads) go to the hooks installed
before, so the server's own cancellation keeps working.
"""

from __future__ import annotations

import dataclasses
import threading

from comfyui_sam_kit.samkit import runtime


class InterruptProcessingException(Exception):
    """Stands in for ``comfy.model_management.InterruptProcessingException``."""


class _RecordingProgress(runtime.Progress):
    def __init__(self, host: "FakeComfyHost", total: int, label: str):
        super().__init__(total, label)
        self._host = host
        host.bars.append(self)
        self.values: list[int] = []

    def set(self, value: int) -> None:
        super().set(value)
        self.values.append(self.value)


class FakeComfyHost:
    def __init__(self, monkeypatch):
        self.thread = threading.get_ident()
        self.flag = threading.Event()
        self.texts: list[str] = []
        self.bars: list[_RecordingProgress] = []
        before = dataclasses.replace(runtime.hooks)

        def mine() -> bool:
            return threading.get_ident() == self.thread

        def interrupted() -> bool:
            return self.flag.is_set() if mine() else before.interrupted()

        def check_interrupt() -> None:
            if not mine():
                return before.check_interrupt()
            if self.flag.is_set():
                self.flag.clear()
                raise InterruptProcessingException()

        def progress(total: int, label: str = ""):
            return _RecordingProgress(self, total, label) if mine() else before.progress(total, label)

        def status_text(text: str) -> None:
            if mine():
                self.texts.append(text)
            else:
                before.status_text(text)

        for name, hook in dict(interrupted=interrupted, check_interrupt=check_interrupt, progress=progress,
                               status_text=status_text).items():
            monkeypatch.setattr(runtime.hooks, name, hook)

    def interrupt(self) -> None:
        """What ComfyUI's Cancel button does (``interrupt_current_processing``)."""
        self.flag.set()
