"""ComfyUI entry point of SAM Kit (comfyui-sam-kit).

ComfyUI imports this folder as a package by path; everything below uses relative imports.
The pack uses the legacy class API (``NODE_CLASS_MAPPINGS``), which every ComfyUI from 0.3.64
on loads, and which lets the node classes be tested without ComfyUI.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
