"""ComfyUI's memory management for the pack's models (part of the bridge; see comfy_bridge.py).

Every loaded model, on every device (the CPU too), is registered with ComfyUI's memory manager
through a :class:`SamKitModelPatcher` that lives exactly as long as the pack's ``LoadedModel``.
ComfyUI therefore counts it, moves it off the GPU to make room, and unloads it on "unload
models" (``POST /free``). Once ComfyUI has dropped it from its loaded list, the pack's loader
cache lets go of it too, so when ComfyUI's execution cache no longer holds it either
(``free_memory`` resets that cache) the model, its patcher and its image embeddings are freed.
A model the loader's own cache drops is freed the same way. The next run loads it again; the
C heap is trimmed after a model is freed (see ``_trim_heap_after_collection``).
One gap is ComfyUI's: "unload models" unloads only the models of ComfyUI's main device, so on a
GPU machine a model loaded with device ``cpu`` stays until the loader's cache drops it.

Large outputs ask :func:`available_memory` first: on ComfyUI's GPU it unloads other models to
make room (``free_memory``), as ComfyUI's own nodes do before a big allocation.
"""

from __future__ import annotations

import ctypes
import gc
import weakref

import torch

from ..samkit import loader

try:  # ComfyUI's modules exist only inside a running ComfyUI
    import comfy.model_management as model_management  # type: ignore
    import comfy.model_patcher as model_patcher  # type: ignore
except Exception:  # pragma: no cover - exercised by the integration tests instead
    model_management = None
    model_patcher = None


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


if model_patcher is not None:

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


def install_heap_trim() -> None:
    if _malloc_trim is not None and _trim_heap_after_collection not in gc.callbacks:
        gc.callbacks.append(_trim_heap_after_collection)


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


def prepare_model(loaded) -> None:
    """Register the model with ComfyUI's memory manager and put it on its device.

    ``load_models_gpu`` frees room first (unloading other models if needed) and loads the model
    back if ComfyUI had unloaded it. On the CPU nothing moves: the weights are already there.
    """
    patcher = _patcher_for(loaded)
    model_management.load_models_gpu([patcher])
    _watch_entry(patcher, loaded)


def available_memory(device: torch.device, needed: int = 0):
    """Bytes a large output may still take on ``device``, after making room for ``needed`` bytes.

    On ComfyUI's own device (the GPU) other models are unloaded first, as far as that helps;
    ``get_free_memory`` counts torch's cached but unused blocks as free, like the pack's default.
    """
    device = torch.device(device)
    if device.type != "cpu" and needed > 0:
        model_management.free_memory(needed, device)
    return int(model_management.get_free_memory(device))
