"""Host hooks: how the library reports progress, checks for cancellation and picks devices.

The library never imports ComfyUI. Inside ComfyUI, ``nodes/comfy_bridge.py`` installs
hooks backed by ``comfy.utils.ProgressBar`` and ``comfy.model_management``; the CLI and
the tests use the defaults below (a terminal bar, no interruption, torch's own devices).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


class Interrupted(Exception):
    """Raised by :func:`check_interrupt` when the host asked to stop."""


class Progress:
    """A progress reporter. ``update(n)`` advances by n; ``set(v)`` sets the absolute value."""

    def __init__(self, total: int, label: str = ""):
        self.total = max(int(total), 1)
        self.value = 0
        self.label = label

    def update(self, n: int = 1) -> None:
        self.set(self.value + n)

    def set(self, value: int) -> None:
        self.value = min(int(value), self.total)

    def close(self) -> None:
        pass


class TerminalProgress(Progress):
    """A plain-text bar on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, label: str = "", stream=None):
        super().__init__(total, label)
        self._stream = stream or sys.stderr
        self._last_draw = 0.0
        self._lock = threading.Lock()

    def set(self, value: int) -> None:
        super().set(value)
        now = time.monotonic()
        if value >= self.total or now - self._last_draw > 0.1:
            self._last_draw = now
            self._draw()

    def _draw(self) -> None:
        with self._lock:
            frac = self.value / self.total
            bar = "#" * int(frac * 30)
            self._stream.write(f"\r{self.label} [{bar:<30}] {frac * 100:5.1f}%")
            if self.value >= self.total:
                self._stream.write("\n")
            self._stream.flush()

    def close(self) -> None:
        if self.value < self.total:
            self._stream.write("\n")
            self._stream.flush()


def _default_device(choice: str) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    if choice == "gpu":
        raise RuntimeError(
            "device 'gpu' was chosen but torch sees no GPU (CUDA or MPS); choose 'auto' or 'cpu'."
        )
    return torch.device("cpu")


def _move_to_device(loaded) -> None:
    # Module.to() walks every submodule even when nothing moves (~10 ms for SAM): check one weight
    first = next(loaded.module.parameters(), None)
    if first is None or first.device != loaded.device:
        loaded.module.to(loaded.device)


def _system_available_memory() -> Optional[int]:
    """Bytes the OS can still hand out: /proc/meminfo's MemAvailable, else psutil when installed."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # ComfyUI ships it; the pack does not require it
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _default_available_memory(device: torch.device, needed: int = 0) -> Optional[int]:
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # blocks torch's caching allocator holds but does not use are free for a new tensor too
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type in ("cpu", "mps"):  # MPS shares the system's memory
        return _system_available_memory()
    return None


@dataclass
class Hooks:
    #: factory(total, label) -> Progress
    progress: Callable[[int, str], Progress] = field(default=lambda total, label="": Progress(total, label))
    #: raises Interrupted (or the host's own exception) when the user cancelled
    check_interrupt: Callable[[], None] = field(default=lambda: None)
    #: non-raising check, for loops that must clean up (cancel a remote job) before raising
    interrupted: Callable[[], bool] = field(default=lambda: False)
    #: choice in {"auto", "gpu", "cpu"} -> torch.device
    device: Callable[[str], torch.device] = field(default=_default_device)
    #: where results end up (ComfyUI's intermediate device; CPU by default)
    output_device: Callable[[], torch.device] = field(default=lambda: torch.device("cpu"))
    #: called before a model runs: puts its weights on its device (a host may make room first)
    prepare_model: Callable[[object], None] = field(default=lambda loaded: _move_to_device(loaded))
    #: a short status line for the user (ComfyUI shows it on the node)
    status_text: Callable[[str], None] = field(default=lambda text: None)
    #: (device, needed bytes) -> bytes that may still be allocated there, or None if unknown (no
    #: check). Asked before large outputs are allocated; a host may make room first (unload models).
    available_memory: Callable[[torch.device, int], Optional[int]] = field(default=_default_available_memory)


hooks = Hooks()


def install(**overrides) -> None:
    """Replace some hooks (used by the ComfyUI bridge and the CLI)."""
    for name, value in overrides.items():
        if not hasattr(hooks, name):
            raise AttributeError(f"unknown runtime hook {name!r}")
        setattr(hooks, name, value)


def progress(total: int, label: str = "") -> Progress:
    return hooks.progress(total, label)


def check_interrupt() -> None:
    hooks.check_interrupt()


def interrupted() -> bool:
    return bool(hooks.interrupted())


def resolve_device(choice: str = "auto") -> torch.device:
    if choice not in ("auto", "gpu", "cpu"):
        raise ValueError(f"device must be 'auto', 'gpu' or 'cpu', not {choice!r}")
    return hooks.device(choice)


def output_device() -> torch.device:
    return hooks.output_device()


def prepare_model(loaded) -> None:
    hooks.prepare_model(loaded)


def status_text(text: str) -> None:
    hooks.status_text(text)


def available_memory(device: torch.device, needed: int = 0) -> Optional[int]:
    """Bytes that may still be allocated on ``device`` (None: unknown). ``needed``: what the caller wants."""
    value = hooks.available_memory(torch.device(device), int(needed))
    return None if value is None else int(value)
