"""A real, headless ComfyUI server for integration tests, and a small client for its HTTP API.

* ``comfyui_checkout() -> Path | None``: the ComfyUI checkout named by ``COMFYUI_PATH`` (None when
  unset; a clear error when it is set but is not a checkout). ``SKIP_REASON`` explains the skip.
* ``clean_env(extra) -> dict``: the environment for a server the tests start.
* ``install_pack(repo_root, base_dir) -> Path``: copy the pack into ``<base_dir>/custom_nodes``
  the way a user's clone sits there (no .git, .venv, caches or tests).
* ``ComfyUIServer.start(comfyui_path, base_dir, ...)``: ``python main.py --cpu`` on a free
  127.0.0.1 port with its own ``--base-directory`` (custom_nodes, models, input, output, temp,
  user) and an in-memory database, so nothing is written into the checkout. ``stop()`` ends it.
* Client methods: ``object_info``, ``queue_prompt`` (raises ``PromptRejected`` with ComfyUI's
  node errors), ``wait_for_history`` (bounded), ``run_prompt``, ``view`` / ``view_image``,
  ``upload_image``, ``interrupt``, ``free`` (the UI's "unload models" / "free memory"), ``queue``,
  ``delete_queued``, ``models``, ``log_text``.
* History helpers: ``status_of``, ``output_images``, ``cached_nodes``, ``status_messages``.

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import httpx

SKIP_REASON = (
    "COMFYUI_PATH is not set: these tests run the pack inside a real ComfyUI. Point COMFYUI_PATH at a "
    "ComfyUI checkout whose requirements are installed (COMFYUI_PYTHON names its Python if that is not "
    "this one)."
)

# What a user's clone in custom_nodes would not carry, plus this repo's dev-only folders.
PACK_IGNORE = (".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache", "tests", "out", "runs", "models",
               "node_modules", ".ci", ".whl", ".gl", "build", "dist", "*.egg-info")

HOST = "127.0.0.1"


class ComfyUIError(RuntimeError):
    """The server did not start, died, or answered something unexpected."""


class PromptRejected(AssertionError):
    """POST /prompt answered 400: ComfyUI's validation refused the graph."""

    def __init__(self, body: dict):
        self.body = body
        error = body.get("error", {})
        super().__init__(f"prompt rejected: {error.get('message', body)}; node_errors={body.get('node_errors')}")


def comfyui_checkout() -> Optional[Path]:
    value = os.environ.get("COMFYUI_PATH", "").strip()
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not (path / "main.py").is_file() or not (path / "nodes.py").is_file():
        raise ComfyUIError(f"COMFYUI_PATH={value} is not a ComfyUI checkout (no main.py / nodes.py there)")
    return path


def comfyui_python() -> str:
    return os.environ.get("COMFYUI_PYTHON") or sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def install_pack(repo_root: Path, base_dir: Path, folder_name: str = "comfyui-sam-kit") -> Path:
    """Copy (not symlink: ComfyUI names the module after the real path) the pack into custom_nodes."""
    target = Path(base_dir) / "custom_nodes" / folder_name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(repo_root, target, ignore=shutil.ignore_patterns(*PACK_IGNORE))
    return target


def clean_env(extra: Optional[dict]) -> dict:
    """This process's environment for a server it starts: no SAMKIT_* or fal key variables, loopback
    never proxied, plus ``extra``."""
    env = dict(os.environ)
    # The tests' own per-test model folder must not leak into the server: inside ComfyUI the pack
    # uses models/sams of the base directory.
    for name in list(env):
        if name.startswith("SAMKIT_") or name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"):
            env.pop(name)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


@dataclass
class ComfyUIServer:
    comfyui_path: Path
    base_dir: Path
    port: int
    process: subprocess.Popen
    log_path: Path
    args: list = field(default_factory=list)
    _log_file: object = None
    _client: Optional[httpx.Client] = None

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, comfyui_path: Path, base_dir: Path, *, extra_args: Iterable[str] = (),
              env: Optional[dict] = None, startup_timeout: float = 240.0) -> "ComfyUIServer":
        base_dir = Path(base_dir)
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
            (base_dir / sub).mkdir(parents=True, exist_ok=True)
        port = free_port()
        args = [
            comfyui_python(), "main.py", "--cpu", "--listen", HOST, "--port", str(port),
            "--base-directory", str(base_dir), "--disable-auto-launch",
            # the default database lives inside the checkout; keep the checkout untouched
            "--database-url", "sqlite:///:memory:",
            *extra_args,
        ]
        log_path = base_dir / "server.log"
        log_file = open(log_path, "w", encoding="utf-8")
        process = subprocess.Popen(args, cwd=str(comfyui_path), stdout=log_file, stderr=subprocess.STDOUT,
                                   env=clean_env(env), start_new_session=True)
        server = cls(Path(comfyui_path), base_dir, port, process, log_path, args, log_file)
        try:
            server._wait_until_up(startup_timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ComfyUIError(f"ComfyUI exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                if self.client.get("/system_stats", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ComfyUIError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def alive(self) -> bool:
        return self.process.poll() is None

    # ------------------------------------------------------------------ http
    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, trust_env=False, timeout=60.0)
        return self._client

    def log_text(self) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def get_json(self, path: str, **params):
        response = self.client.get(path, params=params or None)
        if response.status_code != 200:
            raise ComfyUIError(f"GET {path} -> {response.status_code}: {response.text[:500]}")
        return response.json()

    def object_info(self, node_class: Optional[str] = None) -> dict:
        if node_class is None:
            return self.get_json("/object_info")
        return self.get_json(f"/object_info/{node_class}")[node_class]

    def models(self, folder: str) -> list:
        return self.get_json(f"/models/{folder}")

    def queue(self) -> dict:
        return self.get_json("/queue")

    def queue_prompt(self, prompt: dict, client_id: Optional[str] = None,
                     partial_execution_targets: Optional[list] = None) -> str:
        """POST /prompt; with ``partial_execution_targets`` only those output nodes (and what they need) run."""
        body = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
        if partial_execution_targets is not None:
            body["partial_execution_targets"] = [str(t) for t in partial_execution_targets]
        response = self.client.post("/prompt", json=body)
        if response.status_code == 400:
            raise PromptRejected(response.json())
        if response.status_code != 200:
            raise ComfyUIError(f"POST /prompt -> {response.status_code}: {response.text[:1000]}")
        data = response.json()
        if data.get("node_errors"):
            raise PromptRejected(data)
        return data["prompt_id"]

    def history(self, prompt_id: str) -> Optional[dict]:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def wait_for_history(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.25) -> dict:
        """The prompt's history entry once it has finished (success, error or interruption)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("status_str") is not None:
                return entry
            if not self.alive():
                raise ComfyUIError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(poll)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s; log tail:\n{self.log_tail()}")

    def wait_until_running(self, prompt_id: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = self.queue().get("queue_running", [])
            if any(item[1] == prompt_id for item in running):
                return
            if self.history(prompt_id) is not None:
                raise ComfyUIError(f"prompt {prompt_id} finished before it was seen running")
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not start within {timeout:.0f} s")

    def run_prompt(self, prompt: dict, timeout: float = 300.0) -> dict:
        return self.wait_for_history(self.queue_prompt(prompt), timeout=timeout)

    def run_ok(self, prompt: dict, timeout: float = 300.0) -> dict:
        """Run ``prompt``; its history entry, after asserting it succeeded (the failure described)."""
        entry = self.run_prompt(prompt, timeout=timeout)
        assert status_of(entry) == "success", describe_failure(entry)
        return entry

    def saved_image(self, entry: dict, node_id: str):
        """The one image a save node ``node_id`` wrote in the run ``entry``, as an array."""
        (ref,) = output_images(entry, node_id)
        return self.view_image(ref)

    def delete_queued(self, prompt_ids: Iterable[str]) -> None:
        """Take pending prompts off the queue (they never run)."""
        response = self.client.post("/queue", json={"delete": list(prompt_ids)})
        if response.status_code != 200:
            raise ComfyUIError(f"POST /queue delete -> {response.status_code}: {response.text[:500]}")

    def interrupt(self, prompt_id: Optional[str] = None) -> None:
        body = {"prompt_id": prompt_id} if prompt_id else {}
        response = self.client.post("/interrupt", json=body)
        if response.status_code != 200:
            raise ComfyUIError(f"POST /interrupt -> {response.status_code}: {response.text[:500]}")

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """POST /free: ComfyUI's worker thread unloads models / resets its caches when it next wakes."""
        response = self.client.post("/free", json={"unload_models": unload_models, "free_memory": free_memory})
        if response.status_code != 200:
            raise ComfyUIError(f"POST /free -> {response.status_code}: {response.text[:500]}")

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        response = self.client.get("/view", params={"filename": filename, "subfolder": subfolder, "type": type})
        if response.status_code != 200:
            raise ComfyUIError(f"GET /view {filename} -> {response.status_code}")
        return response.content

    def view_image(self, ref: dict):
        """An image reference from history outputs -> numpy uint8 array (as saved, RGB or L)."""
        import numpy as np
        from PIL import Image

        with Image.open(io.BytesIO(self.view(ref["filename"], ref.get("subfolder", ""), ref.get("type", "output")))) as im:
            im.load()
            return np.asarray(im.convert("RGB"))

    def upload_image(self, data: bytes, name: str, overwrite: bool = True) -> str:
        files = {"image": (name, data, "image/png")}
        form = {"overwrite": "true" if overwrite else "false", "type": "input"}
        response = self.client.post("/upload/image", files=files, data=form)
        if response.status_code != 200:
            raise ComfyUIError(f"POST /upload/image -> {response.status_code}: {response.text[:500]}")
        return response.json()["name"]


# ---------------------------------------------------------------------- history helpers
def status_of(entry: dict) -> str:
    return entry["status"]["status_str"]


def status_messages(entry: dict) -> dict:
    """{event name: data} of a history entry's status messages (last one wins)."""
    return {name: data for name, data in entry["status"].get("messages", [])}


def cached_nodes(entry: dict) -> list:
    return list(status_messages(entry).get("execution_cached", {}).get("nodes", []))


def output_images(entry: dict, node_id: str) -> list:
    return entry.get("outputs", {}).get(str(node_id), {}).get("images", [])


def describe_failure(entry: dict) -> str:
    """The error a failed prompt reported, readable in an assertion message."""
    messages = status_messages(entry)
    error = messages.get("execution_error")
    if error:
        return (f"{error.get('node_type')} (node {error.get('node_id')}): {error.get('exception_type')}: "
                f"{error.get('exception_message')}\n{''.join(error.get('traceback', []))[-3000:]}")
    return str(entry.get("status"))[:3000]
