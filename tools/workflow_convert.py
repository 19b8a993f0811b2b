"""UI-format ComfyUI workflows (what the editor saves) -> API-format prompts (what /prompt runs),
and a validator for API prompts against a server's /object_info.

ComfyUI's server has no such converter: the browser's ``graphToPrompt`` does it. This module
follows what the 1.27 frontend does (read from its bundle):

* widget values are positional: one per widget input, in ``/object_info``'s ``input_order``
  (required, then optional); an input is a widget when its type is INT / FLOAT / STRING /
  BOOLEAN / COMBO or a list of choices, unless it has ``forceInput``;
* an INT widget gets a *control* widget right after it ("fixed", "randomize", ...) when its
  spec says ``control_after_generate``, or, when the spec does not say either way, when it is
  named ``seed`` or ``noise_seed``; control values are saved in the workflow but never sent;
* a combo with ``image_upload`` (``video_upload``, ...) gets an upload button whose value
  ("image") is saved after all other widgets and never sent;
* a linked input replaces the widget value of the same name; ``Note`` / ``MarkdownNote`` are
  not sent; ``Reroute`` nodes are followed to the real source; muted (mode 2) nodes are not sent.

The integration tests load every shipped workflow into the real frontend: its
``app.graphToPrompt()`` must give the same prompt as this converter.

Public API:

* ``workflow_to_prompt(workflow, object_info) -> dict``: raises ``ConversionError`` for
  anything it cannot convert faithfully (unknown node type, wrong number of widget values,
  bypassed nodes, links that point nowhere).
* ``check_links(workflow, object_info) -> list[str]``: each link's recorded type agrees with
  the output it leaves and the input it enters, and both ends list it.
* ``widget_layout(node_info) -> list[tuple[str | None, str]]``: (input name or None for values
  that are not sent, kind) in widgets_values order.
* ``validate_prompt(prompt, object_info, file_choices=None) -> list[str]``: problems ComfyUI's
  validation would raise (missing inputs, type mismatches, out-of-range numbers, unknown combo
  values), empty when the prompt is valid. ``file_choices`` maps (class_type, input name) to
  the files that would be listed once a user has them (model files a shipped workflow refers
  to but a test server lacks).
* ``class_node_info(name, cls, display_name=None) -> dict``: what ``/object_info`` says about a
  legacy (V1) node class, built from the class alone (ComfyUI's server builds it the same way).
* ``pack_object_info(repo_root) -> dict``: that for every node of this pack, imported in-process
  as package ``comfyui_sam_kit`` (the integration tests prove it equals the live server's).
* ``CORE_SNAPSHOT`` / ``load_core_snapshot()`` / ``core_snapshot_from(object_info, types)``: the
  core node specs the shipped workflows use, saved from a real ComfyUI (file lists blanked) in
  tools/core_object_info.json; ``offline_object_info(repo_root)`` = that snapshot +
  ``pack_object_info``, so tools/make_workflows.py and CI need no ComfyUI.

The pack's own code for its example workflows: tools/make_workflows.py writes them by these rules
and the tests check them with this module (test-only checks: tests/testsupport/workflow_checks.py).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Iterable, Optional

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY_NODES = {"Note", "MarkdownNote"}
REROUTE = "Reroute"
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4


class ConversionError(ValueError):
    pass


def _input_specs(node_info: dict) -> list[tuple[str, str, list]]:
    """(section, name, spec) in the order the frontend creates inputs."""
    order = node_info.get("input_order") or {s: list(node_info["input"].get(s, {})) for s in ("required", "optional")}
    specs = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            specs.append((section, name, node_info["input"][section][name]))
    return specs


def _options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def input_type(spec) -> str:
    kind = spec[0]
    return "COMBO" if isinstance(kind, list) else str(kind)


def combo_choices(spec) -> Optional[list]:
    if isinstance(spec[0], list):
        return list(spec[0])
    if spec[0] == "COMBO":
        return list(_options(spec).get("options", []))
    return None


def is_widget(spec) -> bool:
    return input_type(spec) in WIDGET_TYPES and not _options(spec).get("forceInput")


def has_control_widget(name: str, spec) -> bool:
    options = _options(spec)
    kind = input_type(spec)
    if kind == "INT":
        flag = options.get("control_after_generate")
        return bool(flag) if flag is not None else name in ("seed", "noise_seed")
    if kind == "COMBO" and options.get("control_after_generate"):
        raise ConversionError(f"combo '{name}' with control_after_generate is not supported by this converter")
    return False


def widget_layout(node_info: dict) -> list[tuple[Optional[str], str]]:
    layout: list[tuple[Optional[str], str]] = []
    uploads = 0
    for _section, name, spec in _input_specs(node_info):
        if not is_widget(spec):
            continue
        layout.append((name, input_type(spec)))
        if has_control_widget(name, spec):
            layout.append((None, "control_after_generate"))
        if any(_options(spec).get(flag) for flag in UPLOAD_FLAGS):
            uploads += 1
    layout.extend((None, "upload") for _ in range(uploads))
    return layout


def _links_by_id(workflow: dict) -> dict:
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):  # newer serialisation
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"], link["type"]]
        links[link[0]] = link
    return links


def workflow_to_prompt(workflow: dict, object_info: dict) -> dict:
    nodes = {node["id"]: node for node in workflow.get("nodes", [])}
    links = _links_by_id(workflow)

    def source_of(link_id, seen=()):
        if link_id not in links:
            raise ConversionError(f"link {link_id} is not in the workflow's links")
        _lid, origin, origin_slot, _target, _tslot, _type = links[link_id]
        if origin not in nodes:
            raise ConversionError(f"link {link_id} starts at node {origin}, which does not exist")
        origin_node = nodes[origin]
        if origin_node["type"] == REROUTE:  # follow to the real source
            if origin in seen:
                raise ConversionError(f"reroute loop at node {origin}")
            upstream = (origin_node.get("inputs") or [{}])[0].get("link")
            return None if upstream is None else source_of(upstream, seen + (origin,))
        return origin, origin_slot

    prompt = {}
    for node_id, node in nodes.items():
        kind = node["type"]
        mode = node.get("mode", MODE_ALWAYS)
        if kind in FRONTEND_ONLY_NODES or kind == REROUTE or mode == MODE_NEVER:
            continue
        if mode == MODE_BYPASS:
            raise ConversionError(f"node {node_id} ({kind}) is bypassed; shipped workflows should not carry bypassed nodes")
        if kind not in object_info:
            raise ConversionError(f"node {node_id}: type {kind!r} does not exist in this ComfyUI")
        info = object_info[kind]
        layout = widget_layout(info)
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):
            raise ConversionError(f"node {node_id} ({kind}): dict widgets_values are not supported")
        if len(values) != len(layout):
            raise ConversionError(
                f"node {node_id} ({kind}): {len(values)} widget values {values!r} but the node has "
                f"{len(layout)} widgets {[n or k for n, k in layout]}")
        inputs = {name: value for (name, _kind), value in zip(layout, values) if name is not None}
        for slot in node.get("inputs", []) or []:
            link_id = slot.get("link")
            if link_id is None:
                continue
            source = source_of(link_id)
            if source is None:
                continue
            inputs[slot["name"]] = [str(source[0]), int(source[1])]
        prompt[str(node_id)] = {"class_type": kind, "inputs": inputs, "_meta": {"title": node.get("title") or info.get("display_name", kind)}}

    # like graphToPrompt: a link from a node that is not sent (muted) is dropped
    for entry in prompt.values():
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in prompt:
                del entry["inputs"][name]
    return prompt


def _types_match(received: str, expected: str) -> bool:
    # ComfyUI's validate_node_input: "*" matches anything; "A,B" means either
    if received == expected or "*" in (received, expected):
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


def validate_prompt(prompt: dict, object_info: dict, file_choices: Optional[dict] = None) -> list[str]:
    problems: list[str] = []
    file_choices = file_choices or {}
    has_output = False
    for node_id, entry in prompt.items():
        kind = entry.get("class_type")
        where = f"node {node_id} ({kind})"
        info = object_info.get(kind)
        if info is None:
            problems.append(f"{where}: no such node type")
            continue
        has_output |= bool(info.get("output_node"))
        inputs = entry.get("inputs", {})
        specs = {name: (section, spec) for section, name, spec in _input_specs(info)}
        for name in inputs:
            if name not in specs:
                problems.append(f"{where}: unknown input {name!r}")
        for name, (section, spec) in specs.items():
            if name not in inputs:
                if section == "required":
                    problems.append(f"{where}: required input {name!r} is missing")
                continue
            problems.extend(f"{where}.{name}: {p}" for p in _check_value(prompt, object_info, kind, name, spec, inputs[name], file_choices))
    if not has_output:
        problems.append("the prompt has no output node (ComfyUI would refuse it)")
    return problems


def _check_value(prompt, object_info, kind, name, spec, value, file_choices) -> Iterable[str]:
    expected = input_type(spec)
    options = _options(spec)
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int):
        source = prompt.get(value[0])
        if source is None:
            yield f"linked to node {value[0]}, which is not in the prompt"
            return
        outputs = object_info.get(source["class_type"], {}).get("output", [])
        if not 0 <= value[1] < len(outputs):
            yield f"linked to output {value[1]} of {source['class_type']}, which has {len(outputs)} outputs"
            return
        received = outputs[value[1]]
        received = "COMBO" if isinstance(received, list) else received
        if not _types_match(received, expected):
            yield f"linked to a {received} output, expects {expected}"
        return
    if not is_widget(spec):
        yield f"expects a link ({expected}), got the constant {value!r}"
        return
    if expected == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            yield f"expects an integer, got {value!r}"
            return
    elif expected == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            yield f"expects a number, got {value!r}"
            return
    elif expected == "BOOLEAN":
        if not isinstance(value, bool):
            yield f"expects true/false, got {value!r}"
        return
    elif expected == "STRING":
        if not isinstance(value, str):
            yield f"expects a string, got {value!r}"
        return
    elif expected == "COMBO":
        choices = combo_choices(spec) or []
        if value in choices:
            return
        would_list = file_choices.get((kind, name))
        if would_list is not None and value in would_list:
            return
        yield f"{value!r} is not one of the choices {choices[:12]}"
        return
    if "min" in options and value < options["min"]:
        yield f"{value} is below the minimum {options['min']}"
    if "max" in options and value > options["max"]:
        yield f"{value} is above the maximum {options['max']}"


# ---------------------------------------------------------------------- link checks
def check_links(workflow: dict, object_info: dict) -> list[str]:
    """Every link joins an output and an input of matching types, as both of its end nodes record it."""
    problems: list[str] = []
    nodes = {node["id"]: node for node in workflow.get("nodes", [])}
    for link in _links_by_id(workflow).values():
        link_id, origin, origin_slot, target, target_slot, link_type = link
        where = f"link {link_id}"
        source, dest = nodes.get(origin), nodes.get(target)
        if source is None or dest is None:
            problems.append(f"{where}: joins node {origin} to node {target}, and one of them does not exist")
            continue
        outputs = source.get("outputs") or []
        inputs = dest.get("inputs") or []
        if not 0 <= origin_slot < len(outputs) or link_id not in (outputs[origin_slot].get("links") or []):
            problems.append(f"{where}: output {origin_slot} of node {origin} ({source['type']}) does not list it")
            continue
        if not 0 <= target_slot < len(inputs) or inputs[target_slot].get("link") != link_id:
            problems.append(f"{where}: input {target_slot} of node {target} ({dest['type']}) does not list it")
            continue
        if source["type"] == REROUTE or dest["type"] == REROUTE:
            continue
        out_info, in_info = object_info.get(source["type"]), object_info.get(dest["type"])
        if out_info is None or in_info is None:
            continue  # an unknown node type is reported by workflow_to_prompt
        real_out = out_info["output"][origin_slot] if origin_slot < len(out_info["output"]) else None
        if real_out is None:
            problems.append(f"{where}: {source['type']} has no output {origin_slot}")
            continue
        real_out = "COMBO" if isinstance(real_out, list) else real_out
        name = inputs[target_slot].get("name")
        spec = dict((n, sp) for _s, n, sp in _input_specs(in_info)).get(name)
        if spec is None:
            problems.append(f"{where}: {dest['type']} has no input {name!r}")
            continue
        if not _types_match(real_out, input_type(spec)):
            problems.append(f"{where}: {source['type']} output {origin_slot} is {real_out}, "
                            f"{dest['type']}.{name} takes {input_type(spec)}")
        if link_type not in (real_out, "*") and not _types_match(link_type, real_out):
            problems.append(f"{where}: recorded as {link_type}, the output is {real_out}")
    return problems


# ---------------------------------------------------------------------- object_info without a server
def _json_clean(value):
    """Tuples to lists etc., as /object_info's JSON would carry them."""
    return json.loads(json.dumps(value))


def class_node_info(name: str, cls, display_name: Optional[str] = None) -> dict:
    """``/object_info`` of a legacy node class: the fields the converter, the validator and the tests use."""
    inputs = cls.INPUT_TYPES()
    outputs = tuple(cls.RETURN_TYPES)
    info = {
        "input": inputs,
        "input_order": {section: list(entries) for section, entries in inputs.items()},
        "output": outputs,
        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(outputs))),
        "output_name": tuple(getattr(cls, "RETURN_NAMES", outputs)),
        "name": name,
        "display_name": display_name or name,
        "description": getattr(cls, "DESCRIPTION", ""),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
    }
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = cls.OUTPUT_TOOLTIPS
    return _json_clean(info)


# fields that must agree between class_node_info and a live server (python_module etc. differ)
COMPARED_FIELDS = ("input", "input_order", "output", "output_is_list", "output_name", "display_name",
                   "category", "output_node")
PACKAGE = "comfyui_sam_kit"


def import_pack(repo_root: Path):
    """The pack's ``nodes`` package, imported as ``comfyui_sam_kit.nodes`` (a package named like ComfyUI's
    path-derived one, so the pack's relative imports resolve; tests/conftest.py registers the same)."""
    import importlib

    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(Path(repo_root))]
        package.__file__ = str(Path(repo_root) / "__init__.py")
        sys.modules[PACKAGE] = package
    return importlib.import_module(f"{PACKAGE}.nodes")


def pack_object_info(repo_root: Path) -> dict:
    nodes = import_pack(repo_root)
    if getattr(nodes, "IMPORT_ERRORS", None):
        raise RuntimeError(f"pack node modules failed to import: {nodes.IMPORT_ERRORS}")
    return {name: class_node_info(name, cls, nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name))
            for name, cls in nodes.NODE_CLASS_MAPPINGS.items()}


CORE_SNAPSHOT = Path(__file__).resolve().parent / "core_object_info.json"
# combos whose choices are the files a machine has: the snapshot keeps them empty
FILE_INPUTS = {"LoadImage": ["image"], "CheckpointLoaderSimple": ["ckpt_name"], "ControlNetLoader": ["control_net_name"],
               "VAELoader": ["vae_name"], "LoraLoader": ["lora_name"], "UpscaleModelLoader": ["model_name"]}


def blank_file_choices(node_type: str, info: dict) -> dict:
    """A copy of a node's info with the choices of its file-list combos emptied."""
    info = json.loads(json.dumps(info))
    for name in FILE_INPUTS.get(node_type, []):
        for section in ("required", "optional"):
            spec = info["input"].get(section, {}).get(name)
            if spec is not None and isinstance(spec[0], list):
                spec[0] = []
    return info


def core_snapshot_from(object_info: dict, node_types: Iterable[str], comfyui_version: str = "", frontend: str = "") -> dict:
    nodes = {}
    for kind in sorted(set(node_types)):
        info = blank_file_choices(kind, object_info[kind])
        nodes[kind] = {field: info[field] for field in (*COMPARED_FIELDS, "python_module") if field in info}
    return {"comfyui_version": comfyui_version, "frontend_version": frontend,
            "about": "Core node specs the shipped workflows use, from a real ComfyUI's /object_info "
                     "(file-list combos emptied). Refresh with tools/make_workflows.py --url.",
            "file_inputs": {k: v for k, v in FILE_INPUTS.items() if k in nodes},
            "nodes": nodes}


def load_core_snapshot(path: Path = CORE_SNAPSHOT) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def offline_object_info(repo_root: Path, snapshot: Optional[dict] = None) -> dict:
    """Core nodes from the saved snapshot plus the pack's nodes from its own classes."""
    snapshot = snapshot or load_core_snapshot()
    info = {kind: dict(spec) for kind, spec in snapshot["nodes"].items()}
    info.update(pack_object_info(repo_root))
    return info
