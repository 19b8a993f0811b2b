"""The one place that talks to ComfyUI's runtime.

Imported by the node modules. Inside ComfyUI it installs ``samkit.runtime`` hooks backed by
``comfy.utils.ProgressBar`` and ``comfy.model_management`` and registers the ``sams`` model
folder. Without ComfyUI (tests, the CLI) every function here falls back to plain behaviour,
so node classes can be exercised directly.

Memory: every loaded model, on every device (the CPU too), is registered with ComfyUI's memory
manager through a :class:`SamKitModelPatcher` that lives exactly as long as the pack's
``LoadedModel``. ComfyUI therefore counts it, moves it off the GPU to make room, and unloads it on
"unload models" (``POST /free``). Once ComfyUI has dropped it from its loaded list, the pack's
loader cache lets go of it too, so when ComfyUI's execution cache no longer holds it either
(``free_memory`` resets that cache) the model, its patcher and its image embeddings are freed.
A model the loader's own cache drops is freed the same way. The next run loads it again; the
C heap is trimmed after a model is freed (see ``_trim_heap_after_collection``).
One gap is ComfyUI's: "unload models" unloads only the models of ComfyUI's main device, so on a
GPU machine a model loaded with device ``cpu`` stays until the loader's cache drops it.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import weakref

import torch

from ..samkit import loader, runtime

log = logging.getLogger("comfyui-sam-kit")

try:  # ComfyUI's modules exist only inside a running ComfyUI
    import comfy.model_management as model_management  # type: ignore
    import comfy.model_patcher as model_patcher  # type: ignore
    import comfy.utils as comfy_utils  # type: ignore
    import folder_paths  # type: ignore

    IN_COMFY = True
except Exception:  # pragma: no cover - exercised by the integration tests instead
    model_management = None
    model_patcher = None
    comfy_utils = None
    folder_paths = None
    IN_COMFY = False

MODEL_FOLDER = "sams"
MODEL_EXTENSIONS = {".pt", ".pth", ".safetensors", ".bin", ".ckpt"}


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


class SamKitWeights(torch.nn.Module):
    """What ComfyUI's ModelPatcher manages for one pack model: the model's module, as a child.

    ModelPatcher keeps its bookkeeping (``device``, bytes loaded) as attributes of the module it
    manages, and segment-anything's ``Sam.device`` is a read-only property: the pack's modules are
    never handed over bare. The name shows in ComfyUI's log ("Requested to load SamKitWeights").
    """

    def __init__(self, module: torch.nn.Module, name: str):
        super().__init__()
        self.module = module
        self.samkit_name = name
        first = next(module.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")


if IN_COMFY:

    class SamKitModelPatcher(model_patcher.ModelPatcher):
        """ComfyUI's ModelPatcher for one pack model.

        * Loads whole: the pack's layers are plain torch modules, which cannot stream weights from
          the CPU the way ComfyUI's own (comfy.ops) layers do, so a partial ("lowvram") load would
          leave some of them on the wrong device.
        * Unloads whole, for the same reason: asked to free part of it, it frees nothing, and
          ComfyUI then unloads it completely.
        """

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
            return super().load(device_to, lowvram_model_memory=lowvram_model_memory,
                                force_patch_weights=force_patch_weights, full_load=True)

        def partially_unload(self, device_to, memory_to_free=0):
            return 0


#: each LoadedModel's patcher, dying with it (weak keys: this map never keeps a model alive)
_patchers: "weakref.WeakKeyDictionary[object, object]" = weakref.WeakKeyDictionary()


def _find_malloc_trim():
    """glibc's ``malloc_trim``, or None (other C libraries: macOS, Windows, musl)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except Exception:
        return None


_malloc_trim = _find_malloc_trim()
_model_freed = False  # a pack model died since the heap was last trimmed


def _note_model_freed() -> None:
    global _model_freed
    _model_freed = True


def _trim_heap_after_collection(phase: str, info: dict) -> None:
    """After a full garbage collection that followed a pack model's death, give the C heap's free
    pages back to the system. Torch allocates weights of a few MiB each from glibc's heap once the
    process has freed blocks of that size, and glibc keeps freed heap pages: without the trim, the
    process's memory goes down only the first time a model is freed (measured in
    tests/integration/test_memory.py)."""
    global _model_freed
    if phase == "stop" and info.get("generation") == 2 and _model_freed:
        _model_freed = False
        _malloc_trim(0)


def _patcher_for(loaded):
    patcher = _patchers.get(loaded)
    if patcher is None:
        weakref.finalize(loaded, _note_model_freed).atexit = False
        offload = loaded.device if loaded.device.type == "cpu" else model_management.unet_offload_device()
        patcher = SamKitModelPatcher(SamKitWeights(loaded.module, loaded.name), load_device=loaded.device,
                                     offload_device=offload)
        _patchers[loaded] = patcher
    return patcher


def _release(model_ref) -> None:
    model = model_ref()
    if model is not None:
        loader.release(model)


def _watch_entry(patcher, loaded) -> None:
    """When ComfyUI drops the model from its loaded list, the pack's loader lets go of it too.

    The release waits for the death of ComfyUI's entry (``LoadedModel`` of model_management)
    rather than hooking ``detach``: ComfyUI detaches a model in the middle of its unloading loop,
    and a model dying there would run ComfyUI's own cleanup of its list while it still indexes it.
    The entry dies once ComfyUI has taken it out of the list and finished with it.
    """
    watched = getattr(patcher, "samkit_entry", None)  # a weak reference to the entry watched last
    for entry in list(model_management.current_loaded_models):
        if entry.model is patcher and (watched is None or watched() is not entry):
            patcher.samkit_entry = weakref.ref(entry)
            weakref.finalize(entry, _release, weakref.ref(loaded)).atexit = False


def _prepare_model(loaded) -> None:
    """Register the model with ComfyUI's memory manager and put it on its device.

    ``load_models_gpu`` frees room first (unloading other models if needed) and loads the model
    back if ComfyUI had unloaded it. On the CPU nothing moves: the weights are already there.
    """
    patcher = _patcher_for(loaded)
    model_management.load_models_gpu([patcher])
    _watch_entry(patcher, loaded)


def _status_text(text: str) -> None:
    node_id = current_node_id()
    if node_id is None:
        return
    try:
        from server import PromptServer  # type: ignore

        PromptServer.instance.send_progress_text(text, node_id)
    except Exception:  # the status line is a nicety; never fail a run over it
        pass


def install_hooks() -> None:
    if not IN_COMFY:
        return
    runtime.install(
        progress=lambda total, label="": _ComfyProgress(total, label),
        check_interrupt=model_management.throw_exception_if_processing_interrupted,
        interrupted=model_management.processing_interrupted,
        device=_comfy_device,
        output_device=model_management.intermediate_device,
        prepare_model=_prepare_model,
        status_text=_status_text,
    )
    if _malloc_trim is not None and _trim_heap_after_collection not in gc.callbacks:
        gc.callbacks.append(_trim_heap_after_collection)


install_hooks()
register_model_folder()
if IN_COMFY:
    from ..samkit.fal import keys as fal_keys
    from ..samkit.model_folders import set_folder_provider

    set_folder_provider(model_folders)
    # ComfyUI/user/comfyui-sam-kit/fal.ini is searched too (outside the pack and any workflow)
    if hasattr(folder_paths, "get_user_directory"):
        fal_keys.set_config_dir_provider(folder_paths.get_user_directory)
