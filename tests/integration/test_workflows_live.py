"""The shipped workflows (workflows/*.json) against a real ComfyUI and its real frontend.

* ComfyUI's own validation accepts every workflow's full prompt (the SD files it names are empty
  placeholders in the test server; the prompts are taken off the queue before they could run).
* The SAM Kit half of every local workflow really runs (partial execution up to its previews).
* The offline check of tests/test_workflows.py is honest: its core-node snapshot equals this
  server's specs, and the real frontend's ``graphToPrompt`` turns each file into exactly the prompt
  the offline converter makes (browser test), and saves each file back unchanged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import workflow_convert as wc
from testsupport import comfy_assets as A
from testsupport import comfyui
from testsupport.workflow_checks import preview_targets, shipped_file_choices, workflow_tool

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_FILES = sorted((ROOT / "workflows").glob("*.json"))
TOOL = workflow_tool(ROOT)
FILE_CHOICES = shipped_file_choices(TOOL)


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_core_snapshot_matches_this_comfyui(object_info):
    snapshot = wc.load_core_snapshot()
    for kind, saved in snapshot["nodes"].items():
        assert kind in object_info, f"{kind} is in the snapshot but not in this ComfyUI"
        live = wc.blank_file_choices(kind, object_info[kind])
        for field, value in saved.items():
            assert live.get(field) == value, (
                f"{kind}.{field} differs from this ComfyUI's: refresh the snapshot with "
                f"python tools/make_workflows.py --url <this server>")


def test_comfyui_offers_the_workflows_as_templates(comfy_server):
    """ComfyUI serves a pack's workflows/ folder in its template browser (under the pack's folder name)."""
    templates = comfy_server.get_json("/workflow_templates")
    assert sorted(templates.get("comfyui-sam-kit", [])) == sorted(p.stem for p in WORKFLOW_FILES)


def test_comfyui_accepts_every_shipped_workflow(comfy_server, object_info):
    prompts = {}
    for path in WORKFLOW_FILES:
        prompt = wc.workflow_to_prompt(_load(path), object_info)
        assert not wc.validate_prompt(prompt, object_info, FILE_CHOICES), path.name
        prompts[path.name] = prompt

    # Keep the worker busy so the accepted prompts wait in the queue; take them off before they run.
    blocker = comfy_server.queue_prompt(A.long_seg_map_prompt("blocker"))
    accepted, rejected = [], {}
    try:
        comfy_server.wait_until_running(blocker)
        for name, prompt in prompts.items():
            try:
                accepted.append(comfy_server.queue_prompt(prompt))
            except comfyui.PromptRejected as exc:
                rejected[name] = exc.body
    finally:
        comfy_server.delete_queued(accepted)
        comfy_server.interrupt()
        comfy_server.wait_for_history(blocker, timeout=120)
    assert not rejected, json.dumps(rejected, indent=1)[:4000]
    time.sleep(0.5)
    history = comfy_server.get_json("/history")
    assert not set(accepted) & set(history), "a workflow prompt ran although it was taken off the queue"
    assert comfy_server.queue() == {"queue_running": [], "queue_pending": []}


@pytest.mark.parametrize("path", [p for p in WORKFLOW_FILES if not p.name.startswith("fal_")], ids=lambda p: p.stem)
def test_sam_half_of_the_workflow_runs(path, comfy_server, object_info):
    prompt = wc.workflow_to_prompt(_load(path), object_info)
    for node in prompt.values():  # the shipped model is downloaded on first use; use a test checkpoint
        if node["class_type"] == "SamKitModelLoader":
            node["inputs"]["model_name"] = A.SMALL_SAM
        if node["class_type"] == "SamKitSegmentationMap":
            node["inputs"]["points_per_side"] = 8  # a random-weight model: keep the run short
    targets = preview_targets(prompt, object_info)
    assert targets, "no preview of the SAM Kit result"
    entry = comfy_server.wait_for_history(comfy_server.queue_prompt(prompt, partial_execution_targets=targets), timeout=240)
    assert comfyui.status_of(entry) == "success", comfyui.describe_failure(entry)
    ran = set(entry["outputs"])
    assert set(targets) <= ran
    assert not ran & {nid for nid, n in prompt.items() if n["class_type"] == "SaveImage"}, "the SD half ran too"
    for nid in targets:
        for ref in entry["outputs"][nid]["images"]:
            assert comfy_server.view_image(ref).shape[:2] == (512, 768)


# ---------------------------------------------------------------------------- the real frontend
@pytest.mark.browser
def test_frontend_makes_the_same_prompt_and_saves_the_file_unchanged(page, object_info, artifacts_dir):
    for path in WORKFLOW_FILES:
        workflow = _load(path)
        page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
        page.wait_for_timeout(300)
        theirs = page.evaluate("async () => (await app.graphToPrompt()).output")
        ours = wc.workflow_to_prompt(workflow, object_info)
        strip = lambda prompt: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}  # noqa: E731
        assert strip(theirs) == strip(ours), f"{path.name}: the frontend's prompt differs from the converter's"

        saved = page.evaluate("() => JSON.parse(JSON.stringify(app.graph.serialize()))")
        # newer frontends (1.58) may write node ids as strings, and leave widgets_values out of a
        # node without widgets where the shipped file says []: the same workflow either way
        by_id = {str(n["id"]): n for n in saved["nodes"]}
        for node in workflow["nodes"]:
            again = by_id[str(node["id"])]
            assert again["type"] == node["type"]
            assert again.get("widgets_values", []) == node.get("widgets_values", []), \
                f"{path.name} node {node['id']} ({node['type']})"
            assert [(i["name"], i.get("link")) for i in again["inputs"]] == [(i["name"], i.get("link")) for i in node["inputs"]], \
                f"{path.name} node {node['id']} ({node['type']}): inputs"
            assert [o.get("links") or [] for o in again["outputs"]] == [o.get("links") or [] for o in node["outputs"]]
        assert sorted(map(_link_key, saved["links"])) == sorted(map(_link_key, workflow["links"])), path.name
        if artifacts_dir is not None:
            _screenshot_whole_graph(page, artifacts_dir / f"workflow_{path.stem}_{page.frontend}.png")
    assert not page.page_errors, page.page_errors


def _link_key(link) -> tuple:
    """[id, origin, slot, target, slot, type], node and link ids compared as text (1.58 may write strings)."""
    return tuple(str(v) if i in (0, 1, 3) else v for i, v in enumerate(link))


def _screenshot_whole_graph(page, target: Path) -> None:
    viewport = page.viewport_size
    page.set_viewport_size({"width": 2900, "height": 1200})
    try:
        page.evaluate("() => { app.canvas.ds.scale = 0.9; app.canvas.ds.offset = [30, 130]; app.graph.setDirtyCanvas(true, true); }")
        page.wait_for_timeout(600)
        page.screenshot(path=str(target))
    finally:
        page.set_viewport_size(viewport)
        page.wait_for_timeout(300)
