"""Checks of the shipped workflows that only the tests need, beside the pack's converter
(tools/workflow_convert.py, importable as ``workflow_convert``: tests/conftest.py puts tools/ on sys.path).

* ``key_findings(obj) -> list[str]``: places in a JSON document that hold, or are named like,
  a credential (fal keys, Authorization headers, api_key/secret/token fields).
* ``workflow_tool(repo_root=None)``: tools/make_workflows.py as a module; ``shipped_file_choices(tool)``:
  the model and image files the shipped workflows name (a user brings them; test servers lack them).
* ``upstream_of(prompt, node_id) -> set``: the node and every node it depends on;
  ``preview_targets(prompt, object_info, avoid)``: output nodes that need none of ``avoid``
  (the SAM half of a workflow, for partial execution without the SD models).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Iterable, Optional

# ---------------------------------------------------------------------- credentials
FAL_KEY_PATTERN = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}:[0-9a-fA-F]{16,}")
SECRET_TEXT = re.compile(r"(authorization\s*[:=]|\bkey\s+[0-9a-f-]{20,}|\bbearer\s+\S{12,}|fal_key\s*=\s*\S)", re.IGNORECASE)
SECRET_NAME = re.compile(r"(api[_-]?key|fal[_-]?key|secret|token|password|authori[sz]ation|credential)", re.IGNORECASE)


def key_findings(obj, path: str = "$") -> list[str]:
    """Where a JSON document holds something that is, or is named like, a credential."""
    found: list[str] = []
    if isinstance(obj, dict):
        for name, value in obj.items():
            if isinstance(name, str) and SECRET_NAME.search(name):
                found.append(f"{path}.{name}: a field named like a credential")
            if name == "name" and isinstance(value, str) and SECRET_NAME.search(value):
                found.append(f"{path}: an input/widget named {value!r}")
            found.extend(key_findings(value, f"{path}.{name}"))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found.extend(key_findings(value, f"{path}[{i}]"))
    elif isinstance(obj, str):
        if FAL_KEY_PATTERN.search(obj):
            found.append(f"{path}: a fal key (key_id:key_secret)")
        elif SECRET_TEXT.search(obj):
            found.append(f"{path}: text that carries a credential")
    return found


# ---------------------------------------------------------------------- the shipped workflows
def workflow_tool(repo_root: Optional[Path] = None):
    """tools/make_workflows.py as a module (``repo_root``, when given, must be this checkout: the
    module is imported from tools/ on sys.path, so it shares ``workflow_convert`` with the tests)."""
    module = importlib.import_module("make_workflows")
    if repo_root is not None and Path(module.ROOT) != Path(repo_root).resolve():
        raise ValueError(f"make_workflows on sys.path is from {module.ROOT}, not {repo_root}")
    return module


def shipped_file_choices(tool) -> dict:
    return {
        ("LoadImage", "image"): [tool.EXAMPLE_IMAGE],
        ("CheckpointLoaderSimple", "ckpt_name"): [tool.SD15_CHECKPOINT],
        ("ControlNetLoader", "control_net_name"): [tool.SEG_CONTROLNET],
    }


def upstream_of(prompt: dict, node_id: str) -> set:
    """``node_id`` and every node of the API prompt it depends on."""
    seen, todo = set(), [str(node_id)]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(v[0] for v in prompt[current]["inputs"].values()
                        if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str))
    return seen


SD_LOADERS = frozenset({"CheckpointLoaderSimple", "ControlNetLoader", "VAELoader", "LoraLoader"})


def preview_targets(prompt: dict, object_info: dict, avoid: Iterable[str] = SD_LOADERS) -> list:
    """Output nodes whose inputs need none of the node types in ``avoid``."""
    avoid = set(avoid)
    return [nid for nid, node in prompt.items() if object_info[node["class_type"]].get("output_node")
            and not {prompt[s]["class_type"] for s in upstream_of(prompt, nid)} & avoid]
