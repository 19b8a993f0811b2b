"""The shipped example workflows (workflows/*.json), checked without ComfyUI (runs in CI).

Each file is converted from the editor's UI format to the API prompt ComfyUI runs, and the prompt
is validated the way ComfyUI's /prompt would: node types exist, every required input is there,
linked outputs have the input's type, widget values have the right type, range and choice. The
node specs come from

* the pack's own node classes (``INPUT_TYPES`` / ``RETURN_TYPES``, read in-process), and
* tools/core_object_info.json: the core nodes the workflows use, saved from a real
  ComfyUI's /object_info by ``tools/make_workflows.py --url``.

That is honest only if both match a real server and the converter matches the real frontend;
tests/integration/test_workflows_live.py proves exactly that whenever COMFYUI_PATH is set (the
snapshot equals the live specs, the pack's specs equal what ComfyUI serves, and the frontend's own
``graphToPrompt`` gives the same prompt for every file). The "no key" check needs nothing else.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import workflow_convert as wc  # tools/workflow_convert.py: the pack's converter
from testsupport.workflow_checks import key_findings, shipped_file_choices, upstream_of, workflow_tool

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = ROOT / "workflows"
WORKFLOW_FILES = sorted(WORKFLOW_DIR.glob("*.json"))


MW = workflow_tool(ROOT)
# Files the workflows name that a user brings (the notes say where they go).
FILE_CHOICES = shipped_file_choices(MW)


@pytest.fixture(scope="module")
def object_info() -> dict:
    return wc.offline_object_info(ROOT)


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _of_type(prompt: dict, kind: str) -> list:
    return [nid for nid, node in prompt.items() if node["class_type"] == kind]


def test_workflows_are_shipped():
    names = {p.name for p in WORKFLOW_FILES}
    assert set(MW.WORKFLOWS) <= names, f"missing: {set(MW.WORKFLOWS) - names} (run python tools/make_workflows.py)"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.stem)
def test_workflow_converts_to_a_valid_prompt(path, object_info):
    workflow = _load(path)
    assert not wc.check_links(workflow, object_info)
    prompt = wc.workflow_to_prompt(workflow, object_info)
    problems = wc.validate_prompt(prompt, object_info, FILE_CHOICES)
    assert not problems, "\n".join(problems)
    assert any(node["class_type"].startswith("SamKit") for node in prompt.values()), "no SAM Kit node"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.stem)
def test_workflow_carries_no_key(path):
    text = path.read_text(encoding="utf-8")
    assert not key_findings(json.loads(text))
    assert "FAL_KEY=" not in text and "Authorization" not in text


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.stem)
def test_workflow_feeds_an_image_to_image_graph(path, object_info):
    """The SAM Kit result reaches a KSampler whose decoded image is saved, through the intended socket."""
    prompt = wc.workflow_to_prompt(_load(path), object_info)
    sam_nodes = {nid for nid, node in prompt.items() if node["class_type"].startswith("SamKit")
                 and node["class_type"] != "SamKitModelLoader"}
    saves = _of_type(prompt, "SaveImage")
    assert saves, "no SaveImage"
    upstream = set().union(*(upstream_of(prompt, s) for s in saves))
    assert _of_type(prompt, "KSampler") and set(_of_type(prompt, "KSampler")) <= upstream
    assert sam_nodes & upstream, "the SAM Kit node's result does not reach the saved image"

    def fed_by_sam(kind: str, input_name: str) -> bool:
        return any(upstream_of(prompt, prompt[nid]["inputs"][input_name][0]) & sam_nodes
                   for nid in _of_type(prompt, kind) if isinstance(prompt[nid]["inputs"].get(input_name), list))

    stem = path.stem
    if "segmentation_map" in stem:
        assert fed_by_sam("ControlNetApplyAdvanced", "image"), "the seg map is not the ControlNet image"
        control = prompt[_of_type(prompt, "ControlNetLoader")[0]]["inputs"]["control_net_name"]
        assert "seg" in control
    elif "inpaint" in stem:
        assert fed_by_sam("SetLatentNoiseMask", "mask"), "the Tiny SAM mask does not drive the noise mask"
        assert fed_by_sam("ImageCompositeMasked", "mask")
    elif "background" in stem:
        assert fed_by_sam("ImageCompositeMasked", "mask"), "the subject is not composited by the Tiny SAM mask"
    else:
        pytest.fail(f"{path.name}: no expectation for this workflow; add one")


def test_every_node_of_the_pack_is_in_a_workflow(object_info):
    used = {node["type"] for path in WORKFLOW_FILES for node in _load(path)["nodes"]}
    pack = set(wc.pack_object_info(ROOT))
    assert pack <= used, f"nodes without an example workflow: {sorted(pack - used)}"


def test_shipped_files_are_what_the_generator_writes(object_info):
    built = MW.build_all(object_info)
    assert set(built) == {p.name for p in WORKFLOW_FILES}
    for name, workflow in built.items():
        assert (WORKFLOW_DIR / name).read_text(encoding="utf-8") == MW.render(workflow), (
            f"{name} is out of date: run python tools/make_workflows.py")


def test_snapshot_covers_the_core_nodes_the_workflows_use():
    snapshot = wc.load_core_snapshot()
    used = {node["type"] for path in WORKFLOW_FILES for node in _load(path)["nodes"]}
    core = {t for t in used if not t.startswith("SamKit") and t not in wc.FRONTEND_ONLY_NODES}
    assert core <= set(snapshot["nodes"]), f"not in the snapshot: {core - set(snapshot['nodes'])}"
    assert snapshot["comfyui_version"] and snapshot["frontend_version"]


# ---------------------------------------------------------------------------- the checks have teeth
def _inpaint() -> dict:
    return _load(WORKFLOW_DIR / "tiny_sam_inpaint.json")


def _node(workflow: dict, kind: str) -> dict:
    return next(n for n in workflow["nodes"] if n["type"] == kind)


@pytest.mark.parametrize("plant", ["widget", "note", "property", "input"])
def test_key_check_finds_a_planted_key(plant):
    workflow = _inpaint()
    fake = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0:0123456789abcdef0123456789abcdef"
    if plant == "widget":
        _node(workflow, "SamKitTinySAM")["widgets_values"][3] = fake
    elif plant == "note":
        _node(workflow, "Note")["widgets_values"][0] += f"\nmy key: {fake}"
    elif plant == "property":
        _node(workflow, "SamKitTinySAM")["properties"]["fal_key"] = "x"
    else:
        _node(workflow, "SamKitTinySAM")["inputs"].append({"name": "api_key", "type": "STRING", "link": None})
    assert key_findings(workflow)


def test_converter_and_validator_reject_broken_workflows(object_info):
    good = _inpaint()
    assert not wc.validate_prompt(wc.workflow_to_prompt(good, object_info), object_info, FILE_CHOICES)

    shifted = copy.deepcopy(good)  # one widget value lost: every later value would land in the wrong widget
    _node(shifted, "SamKitTinySAM")["widgets_values"].pop(0)
    with pytest.raises(wc.ConversionError, match="widget values"):
        wc.workflow_to_prompt(shifted, object_info)

    unknown = copy.deepcopy(good)
    _node(unknown, "GrowMask")["type"] = "GrowMaskThatDoesNotExist"
    with pytest.raises(wc.ConversionError, match="does not exist"):
        wc.workflow_to_prompt(unknown, object_info)

    out_of_range = copy.deepcopy(good)
    _node(out_of_range, "SamKitTinySAM")["widgets_values"][1] = 1.5  # confidence 0..1
    problems = wc.validate_prompt(wc.workflow_to_prompt(out_of_range, object_info), object_info, FILE_CHOICES)
    assert any("confidence" in p and "maximum" in p for p in problems)

    bad_choice = copy.deepcopy(good)
    _node(bad_choice, "SamKitModelLoader")["widgets_values"][1] = "tpu"
    problems = wc.validate_prompt(wc.workflow_to_prompt(bad_choice, object_info), object_info, FILE_CHOICES)
    assert any("device" in p for p in problems)

    # the Tiny SAM mask rewired into an IMAGE input: the link types disagree
    rewired = copy.deepcopy(good)
    encode = _node(rewired, "VAEEncode")
    tiny = _node(rewired, "SamKitTinySAM")
    pixels_link = next(i for i in encode["inputs"] if i["name"] == "pixels")["link"]
    link = next(lk for lk in rewired["links"] if lk[0] == pixels_link)
    link[1], link[2] = tiny["id"], 1  # origin: Tiny SAM's `mask`
    tiny["outputs"][1]["links"] = (tiny["outputs"][1]["links"] or []) + [pixels_link]
    assert any("MASK" in p for p in wc.check_links(rewired, object_info))
    problems = wc.validate_prompt(wc.workflow_to_prompt(rewired, object_info), object_info, FILE_CHOICES)
    assert any("VAEEncode" in p and "MASK" in p for p in problems)
