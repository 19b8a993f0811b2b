"""Node classes (ComfyUI's legacy class API: it runs on every ComfyUI since 0.3.x and imports
without ComfyUI, so CI exercises the nodes directly).

Each node module is imported on its own: one family failing to import (a missing optional
dependency, say) is logged and leaves the other nodes working.
"""

from __future__ import annotations

import importlib
import logging

from . import comfy_bridge

log = logging.getLogger("comfyui-sam-kit")

NODE_MODULES = ("model_loader", "seg_map", "segment_picker", "tiny_sam", "fal_remote", "fal_sam3")

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
IMPORT_ERRORS: dict = {}

for _name in NODE_MODULES:
    try:
        _module = importlib.import_module(f".{_name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{_name}":
            continue  # not written yet / removed
        IMPORT_ERRORS[_name] = exc
        log.warning("SAM Kit: %s nodes are unavailable: %s", _name, exc, exc_info=True)
        continue
    except Exception as exc:  # keep the rest of the pack usable
        IMPORT_ERRORS[_name] = exc
        log.warning("SAM Kit: %s nodes are unavailable: %s", _name, exc, exc_info=True)
        continue
    NODE_CLASS_MAPPINGS.update(getattr(_module, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_module, "NODE_DISPLAY_NAME_MAPPINGS", {}))

# the one place the pack connects itself to ComfyUI (hooks, model folder, config folder)
comfy_bridge.install()
