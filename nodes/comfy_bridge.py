"""The one place that talks to ComfyUI's runtime (with ``comfy_memory.py``, its memory half, and
``comfy_preview.py``, the Tiny SAM editor's preview route).

Nothing happens on import. The pack's entry point (``nodes/__init__.py``) calls :func:`install`
once, after the node modules are imported: inside ComfyUI it installs ``samkit.runtime`` hooks
backed by ``comfy.utils.ProgressBar`` and ``comfy.model_management``, registers the ``sams``
model folder, and tells the library where the model folders and ComfyUI's user folder are.
Without ComfyUI (tests, the CLI) :func:`install` does nothing and every hook keeps its plain
default, so node classes can be exercised directly.
"""

from __future__ import annotations

import logging
import os

from ..samkit import runtime

log = logging.getLogger("comfyui-sam-kit")

try:  # ComfyUI's modules exist only inside a running ComfyUI
    import comfy.model_management as model_management  # type: ignore
    import comfy.utils as comfy_utils  # type: ignore
    import folder_paths  # type: ignore

    IN_COMFY = True
except Exception:  # pragma: no cover - exercised by the integration tests instead
    model_management = None
    comfy_utils = None
    folder_paths = None
    IN_COMFY = False

MODEL_FOLDER = "sams"
MODEL_EXTENSIONS = {".pt", ".pth", ".safetensors", ".bin", ".ckpt"}
_installed = False


def register_model_folder() -> None:
    """Add ``models/sams`` without discarding paths users set in extra_model_paths.yaml."""
    if folder_paths is None:
        return
    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))
    _paths, extensions = folder_paths.folder_names_and_paths[MODEL_FOLDER]
    # An empty set means "every file": keep partial downloads and notes out of the dropdown.
    extensions.update(getattr(folder_paths, "supported_pt_extensions", MODEL_EXTENSIONS) | MODEL_EXTENSIONS)


def model_folders() -> list[str]:
    if folder_paths is None:
        return []
    try:
        return folder_paths.get_folder_paths(MODEL_FOLDER)
    except KeyError:
        return []


def current_node_id() -> str | None:
    try:
        from comfy_execution.utils import get_executing_context  # type: ignore
    except Exception:
        return None
    ctx = get_executing_context()
    return ctx.node_id if ctx is not None else None


class _ComfyProgress(runtime.Progress):
    def __init__(self, total: int, label: str = ""):
        super().__init__(total, label)
        self._bar = comfy_utils.ProgressBar(self.total)

    def set(self, value: int) -> None:
        super().set(value)
        self._bar.update_absolute(self.value, self.total)


def _comfy_device(choice: str):
    import torch

    if choice == "cpu":
        return torch.device("cpu")
    device = model_management.get_torch_device()
    if choice == "gpu" and device.type == "cpu":
        raise RuntimeError(
            "device 'gpu' was chosen but ComfyUI runs on the CPU (started with --cpu, or no GPU); "
            "choose 'auto' or 'cpu'."
        )
    return device


def _status_text(text: str) -> None:
    node_id = current_node_id()
    if node_id is None:
        return
    try:
        from server import PromptServer  # type: ignore

        PromptServer.instance.send_progress_text(text, node_id)
    except Exception:  # the status line is a nicety; never fail a run over it
        pass


def install() -> bool:
    """Connect the library to ComfyUI, once; returns whether ComfyUI is there."""
    global _installed
    if not IN_COMFY or _installed:
        return IN_COMFY
    from . import comfy_memory, comfy_preview
    from ..samkit.fal import keys as fal_keys
    from ..samkit.model_folders import set_folder_provider

    runtime.install(
        progress=lambda total, label="": _ComfyProgress(total, label),
        check_interrupt=model_management.throw_exception_if_processing_interrupted,
        interrupted=model_management.processing_interrupted,
        device=_comfy_device,
        output_device=model_management.intermediate_device,
        prepare_model=comfy_memory.prepare_model,
        status_text=_status_text,
        available_memory=comfy_memory.available_memory,
    )
    comfy_memory.install_heap_trim()
    register_model_folder()
    set_folder_provider(model_folders)
    # ComfyUI/user/comfyui-sam-kit/fal.ini is searched too (outside the pack and any workflow)
    if hasattr(folder_paths, "get_user_directory"):
        fal_keys.set_config_dir_provider(folder_paths.get_user_directory)
    comfy_preview.install()  # the Tiny SAM editor's live preview route
    _installed = True
    return True
