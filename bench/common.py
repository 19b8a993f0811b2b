"""Shared plumbing of the benchmark scripts: set-up, a clock, memory meters, output.

Every script measures both sides in one process, on the same checkpoint file and the same
image, and prints ratios; absolute times on a shared CPU move with the machine's load, ratios
taken in one run much less. Each script prints a human-readable report.

Importing this module puts the repo root (``samkit``) and tools/ (``synthetic_checkpoints``,
shared with the tests) on sys.path.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# ultralytics must never reach for the network (no internet here; none needed anywhere)
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "samkit-bench-ultralytics"))
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost,::1")

import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_cache_dir() -> Path:
    """Where built checkpoints are kept between runs (outside the repo: they are large)."""
    env = os.environ.get("SAMKIT_BENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "samkit-bench"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the models run (default cpu)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                        help="model precision (fp16 needs --device cuda)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all cores)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where built checkpoints are kept (default $SAMKIT_BENCH_CACHE or ~/.cache/samkit-bench)")
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke run on tiny settings")


def setup(args) -> torch.device:
    """Threads, cache folder and device; returns the torch device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cache_dir is None:
        args.cache_dir = default_cache_dir()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was given but torch sees no CUDA GPU")
    if args.precision == "fp16" and args.device == "cpu":
        raise SystemExit("error: fp16 needs --device cuda (use fp32 or bf16 on the CPU)")
    # the model loader's 'gpu' choice is CUDA when torch has it
    args.loader_device = "gpu" if args.device == "cuda" else "cpu"
    return torch.device(args.device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ memory


_libc = None


def _trim_heap() -> None:
    """Give freed heap back to the OS, so the next peak-RSS reading starts from what is live."""
    global _libc
    gc.collect()
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except OSError:  # not glibc: readings may then under-count reused heap
        pass


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryReading:
    #: growth of the process's peak resident memory over what it held before the call (MiB, CPU)
    rss_peak_mib: float | None = None
    #: torch.cuda.max_memory_allocated during the call minus what was allocated before (MiB)
    cuda_peak_mib: float | None = None
    #: peak of Python/numpy allocations traced by tracemalloc (MiB); torch CPU tensors are not traced
    tracemalloc_peak_mib: float | None = None

    def describe(self) -> str:
        parts = []
        if self.cuda_peak_mib is not None:
            parts.append(f"CUDA peak +{self.cuda_peak_mib:.0f} MiB")
        if self.rss_peak_mib is not None:
            parts.append(f"RSS peak +{self.rss_peak_mib:.0f} MiB")
        if self.tracemalloc_peak_mib is not None:
            parts.append(f"tracemalloc peak {self.tracemalloc_peak_mib:.0f} MiB")
        return ", ".join(parts) or "n/a"

    def headline_mib(self) -> float | None:
        return self.cuda_peak_mib if self.cuda_peak_mib is not None else self.rss_peak_mib


@contextlib.contextmanager
def measure_memory(device: torch.device, use_tracemalloc: bool = False):
    """Peak memory of the block: RSS growth on CPU, allocator peak on CUDA, optionally tracemalloc."""
    reading = MemoryReading()
    _trim_heap()
    rss_ok = _reset_peak_rss()
    rss_before = _status_kib("VmRSS")
    cuda_before = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    if use_tracemalloc:
        import tracemalloc

        tracemalloc.start()
    try:
        yield reading
    finally:
        if use_tracemalloc:
            import tracemalloc

            reading.tracemalloc_peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        if cuda_before is not None:
            torch.cuda.synchronize(device)
            reading.cuda_peak_mib = (torch.cuda.max_memory_allocated(device) - cuda_before) / 2**20
        peak = _status_kib("VmHWM")
        if rss_ok and peak is not None and rss_before is not None:
            reading.rss_peak_mib = max(0, peak - rss_before) / 1024


# ------------------------------------------------------------------ clock


def timed(fn, device: torch.device):
    """(result, seconds) of one call, with the device synchronised around it."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------ output


def fmt_s(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def header(title: str) -> None:
    print()
    print(title)
    print("-" * len(title))


def environment() -> dict:
    import platform

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def ensure_repo_on_path() -> None:
    """``samkit`` imports as a top-level package from the repo root (as ``python -m samkit`` does), and
    ``synthetic_checkpoints`` from tools/ (the checkpoint builders the tests share)."""
    for folder in (REPO_ROOT / "tools", REPO_ROOT):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


ensure_repo_on_path()


def print_table(head: tuple, rows: list) -> None:
    """A Markdown table (what README quotes) of ``rows``, tuples of strings under ``head``."""
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
