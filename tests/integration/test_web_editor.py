"""The Tiny SAM point/box editor (web/js/tiny_sam_editor.js) in the real ComfyUI page.

Headless Debian Chromium through Playwright against the session's real ComfyUI server (see
conftest.py) with the pack installed. The graph is set up through the page's ``app`` object;
every prompt edit is a real mouse event on the editor's canvas, and expectations come from the
image alone: a 320×200 test image (not square, so a wrong scale or offset shows) is shown whole
and centred, so the test works out independently where each image pixel lands on screen and
checks both what is drawn there and what the widgets say.

Needs COMFYUI_PATH (and COMFYUI_PYTHON if ComfyUI's requirements live elsewhere), playwright
and Debian's chromium; skipped with the reason otherwise. With SAMKIT_TEST_ARTIFACTS set,
screenshots of the editor are saved there.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from testsupport import browser
from testsupport import comfy_assets as A

IMAGE_NAME = A.EDITOR_IMAGE
W, H = A.EDITOR_SIZE
RED, GREEN, BACKGROUND = (A.EDITOR_COLOURS[k] for k in ("ellipse", "rectangle", "background"))
POSITIVE_DOT, NEGATIVE_DOT = (0x2E, 0xCC, 0x40), (0xFF, 0x41, 0x36)  # the editor's marker colours

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(browser.skip_reason() is not None, reason=str(browser.skip_reason())),
]


@pytest.fixture(scope="module")
def server(comfy_server):
    return comfy_server


# ---------------------------------------------------------------------------- page helpers
BUILD_GRAPH = """async ([imageName, samType]) => {
  const app = window.app;
  app.graph.clear();
  const add = (type, x, y) => { const n = LiteGraph.createNode(type); n.pos = [x, y]; app.graph.add(n); return n; };
  const load = add("LoadImage", 40, 60);
  const sam = add(samType ?? "SamKitTinySAM", 420, 40);
  const preview = add("PreviewImage", 980, 60);
  const slot = (node, name) => node.inputs.findIndex((i) => i.name === name);
  load.connect(0, sam, slot(sam, "image"));
  sam.connect(0, preview, 0);
  if (slot(sam, "model") >= 0) {
    const model = add("SamKitModelLoader", 40, 420);
    model.connect(0, sam, slot(sam, "model"));
    model.widgets.find((w) => w.name === "model_name").value = "test_small.pth";
  }
  const file = load.widgets.find((w) => w.name === "image");
  file.value = imageName;
  file.callback?.(file.value);
  app.canvas.ds.scale = 1;
  app.canvas.ds.offset = [0, 0];
  app.graph.setDirtyCanvas(true, true);
  return sam.id;
}"""

PROMPT_WIDGETS = ("box_prompt", "point_prompt", "point_label")


def tiny_sam_id(page) -> int:
    return page.evaluate("app.graph.nodes.find((n) => n.comfyClass === 'SamKitTinySAM').id")


def widget_values(page, node_id) -> dict:
    return page.evaluate(
        """([id, names]) => Object.fromEntries(names.map(
             (n) => [n, app.graph.getNodeById(id).widgets.find((w) => w.name === n).value]))""",
        [node_id, list(PROMPT_WIDGETS)],
    )


def editor_state(page, node_id) -> dict:
    """What the editor shows, for waits and failure messages."""
    return page.evaluate(
        """(id) => { const n = app.graph.getNodeById(id);
                     const w = n?.widgets?.find((w) => w.name === "prompt_editor");
                     const c = w?.element?.querySelector("canvas");
                     return { exists: !!w, connected: !!w?.element?.isConnected, text: w?.element?.textContent ?? null,
                              canvasWidth: c?.clientWidth ?? 0, size: n ? [...n.size] : null,
                              image: n?.getInputNode?.(n.inputs.findIndex((i) => i.name === "image"))?.widgets?.[0]?.value ?? null }; }""",
        node_id)


def wait_for_image(page, node_id) -> None:
    """Until the editor shows the 320×200 input image and the canvas has settled after layout."""
    try:
        page.wait_for_function(
            """(id) => {
                 const w = app.graph.getNodeById(id)?.widgets?.find((w) => w.name === "prompt_editor");
                 return !!w && w.element.isConnected && w.element.textContent.includes("320×200")
                        && w.element.querySelector("canvas").clientWidth > 0;
               }""",
            arg=node_id, timeout=30_000,
        )
    except Exception as exc:
        raise AssertionError(f"the editor did not show the input image: {editor_state(page, node_id)}") from exc
    settle(page)


def set_view(page, scale: float, offset: list) -> None:
    page.evaluate("([s, o]) => { app.canvas.ds.scale = s; app.canvas.ds.offset = o; }", [scale, offset])
    settle(page)


def settle(page) -> None:
    app_redraw = "app.graph.setDirtyCanvas(true, true)"
    page.evaluate(app_redraw)
    page.evaluate("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.wait_for_timeout(150)


class ImageOnScreen:
    """Where the editor must show the input image: whole, centred, aspect kept, in the canvas' on-screen box."""

    def __init__(self, page, node_id):
        rect, css_width = page.evaluate(
            """(id) => { const c = app.graph.getNodeById(id).widgets.find((w) => w.name === "prompt_editor")
                                    .element.querySelector("canvas");
                         return [c.getBoundingClientRect().toJSON(), c.clientWidth]; }""",
            node_id,
        )
        self.rect = rect
        self.zoom = rect["width"] / css_width  # screen px per CSS px of the editor (canvas zoom)
        self.scale = min(rect["width"] / W, rect["height"] / H)
        self.left = rect["x"] + (rect["width"] - W * self.scale) / 2
        self.top = rect["y"] + (rect["height"] - H * self.scale) / 2

    def at(self, x: float, y: float) -> tuple:
        """Screen position of the centre of image pixel (x, y)."""
        return self.left + (x + 0.5) * self.scale, self.top + (y + 0.5) * self.scale


def colour_at(shot: np.ndarray, pos: tuple) -> np.ndarray:
    return shot[int(round(pos[1])), int(round(pos[0]))].astype(int)


def assert_colour(shot, pos, expected, what, tolerance=40):
    got = colour_at(shot, pos)
    if np.abs(got - np.array(expected)).max() > tolerance:
        _save_failure_shot(shot, what)
        raise AssertionError(f"{what}: colour {got.tolist()} at {pos}, expected ~{expected}")


def _save_failure_shot(shot, what: str) -> None:
    folder = os.environ.get("SAMKIT_TEST_ARTIFACTS", "").strip()
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        name = "editor_failure_" + "".join(c if c.isalnum() else "_" for c in what)[:60] + ".png"
        (Path(folder) / name).write_bytes(A.png_bytes(shot))


def assert_close(actual_text: str, expected: list, what: str) -> None:
    actual = json.loads(actual_text)
    assert np.array(actual).shape == np.array(expected).shape, f"{what}: {actual_text} vs expected {expected}"
    assert np.abs(np.array(actual) - np.array(expected)).max() <= 1, f"{what}: {actual_text} vs expected {expected} (±1 px)"


def drag(page, start: tuple, end: tuple) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=8)
    page.mouse.up()


def check_shown_image(page, node_id) -> ImageOnScreen:
    """The displayed image sits where ImageOnScreen says: sample the ellipse, the rectangle and the background."""
    shown = ImageOnScreen(page, node_id)
    shot = browser.screenshot_rgb(page)
    assert_colour(shot, shown.at(60, 100), RED, "ellipse (image pixel 60,100)")
    assert_colour(shot, shown.at(280, 140), GREEN, "rectangle (image pixel 280,140)")
    assert_colour(shot, shown.at(170, 185), BACKGROUND, "background (image pixel 170,185)")
    assert_colour(shot, shown.at(5, 5), BACKGROUND, "top-left corner of the image")
    assert_colour(shot, shown.at(W - 3, H - 3), BACKGROUND, "bottom-right corner of the image")
    return shown


def check_markers(page, node_id, points: list, labels: list) -> None:
    """Each point's dot is drawn over its pixel (sampled between the white +/− sign and the rim)."""
    shown = ImageOnScreen(page, node_id)
    shot = browser.screenshot_rgb(page)
    for (x, y), label in zip(points, labels):
        cx, cy = shown.at(x, y)
        off = 2.5 * shown.zoom  # inside the dot, clear of its white rim and of the +/− strokes
        assert_colour(shot, (cx + off, cy + off), POSITIVE_DOT if label == 1 else NEGATIVE_DOT, f"marker of point {x},{y}")


# ---------------------------------------------------------------------------- tests
def test_click_drag_resize_save_load_and_queue(page, server, artifacts_dir):
    node = page.evaluate(BUILD_GRAPH, [IMAGE_NAME])
    wait_for_image(page, node)
    assert widget_values(page, node) == {"box_prompt": "[[0,0,0,0]]", "point_prompt": "[[0,0]]", "point_label": "[0]"}
    shown = check_shown_image(page, node)

    # left click = positive, right click = negative, shift+click = negative, drag = box
    page.mouse.click(*shown.at(90, 100))
    page.mouse.click(*shown.at(240, 105), button="right")
    page.keyboard.down("Shift")
    page.mouse.click(*shown.at(300, 30))
    page.keyboard.up("Shift")
    drag(page, shown.at(150, 20), shown.at(300, 180))
    values = widget_values(page, node)
    assert_close(values["point_prompt"], [[90, 100], [240, 105], [300, 30]], "point_prompt")
    assert json.loads(values["point_label"]) == [1, 0, 0]
    assert_close(values["box_prompt"], [[150, 20, 150, 160]], "box_prompt")

    # clicking a point removes it; a second box is removed with its ✕ (inside its top-right corner)
    page.mouse.click(*shown.at(300, 30))
    drag(page, shown.at(20, 150), shown.at(70, 190))
    assert_close(widget_values(page, node)["box_prompt"], [[150, 20, 150, 160], [20, 150, 50, 40]], "second box")
    corner = shown.at(70 - 0.5, 150 - 0.5)
    page.mouse.click(corner[0] - 7 * shown.zoom, corner[1] + 7 * shown.zoom)
    values = widget_values(page, node)
    assert_close(values["point_prompt"], [[90, 100], [240, 105]], "point_prompt after deleting a point")
    assert json.loads(values["point_label"]) == [1, 0]
    assert_close(values["box_prompt"], [[150, 20, 150, 160]], "box_prompt after deleting a box")
    check_markers(page, node, [[90, 100], [240, 105]], [1, 0])

    # resize the node and zoom the canvas: the image, the markers and new clicks still line up
    page.evaluate("(id) => { app.graph.getNodeById(id).setSize([600, 700]); }", node)
    set_view(page, 1.1, [-380, 0])  # zoomed in, node moved left clear of the minimap
    settle(page)
    shown_big = check_shown_image(page, node)
    assert shown_big.scale > shown.scale * 1.3, "the editor did not grow with the node"
    check_markers(page, node, [[90, 100], [240, 105]], [1, 0])
    page.mouse.click(*shown_big.at(240, 105))  # remove the negative point by clicking its marker…
    assert_close(widget_values(page, node)["point_prompt"], [[90, 100]], "after removing at the new size")
    page.mouse.click(*shown_big.at(250, 80), button="right")  # …and place another one
    page.mouse.click(*shown_big.at(60, 170))
    drag(page, shown_big.at(200, 190), shown_big.at(180, 50))  # dragged upwards and leftwards
    values = widget_values(page, node)
    expected_points, expected_labels = [[90, 100], [250, 80], [60, 170]], [1, 0, 1]
    assert_close(values["point_prompt"], expected_points, "point_prompt at the new size")
    assert json.loads(values["point_label"]) == expected_labels
    assert_close(values["box_prompt"], [[150, 20, 150, 160], [180, 50, 20, 140]], "box_prompt at the new size")

    # save and load the workflow: the widgets carry the prompts, the editor shows them again
    workflow = page.evaluate("JSON.parse(JSON.stringify(app.graph.serialize()))")
    saved = next(n for n in workflow["nodes"] if n["type"] == "SamKitTinySAM")
    assert saved["widgets_values"] == [1024, 0.4, 0.9, values["box_prompt"], values["point_prompt"], values["point_label"]]
    page.evaluate("() => app.graph.clear()")
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    set_view(page, 1, [-380, 0])
    node = tiny_sam_id(page)
    wait_for_image(page, node)
    assert widget_values(page, node) == values
    state = json.loads(page.evaluate(
        "(id) => app.graph.getNodeById(id).widgets.find((w) => w.name === 'prompt_editor').element.dataset.state", node))
    assert [[p["x"], p["y"]] for p in state["points"]] == json.loads(values["point_prompt"])
    assert [p["label"] for p in state["points"]] == expected_labels
    assert [[b["x"], b["y"], b["w"], b["h"]] for b in state["boxes"]] == json.loads(values["box_prompt"])
    check_shown_image(page, node)
    check_markers(page, node, json.loads(values["point_prompt"]), expected_labels)

    # the prompt the frontend builds and queues carries the widget values
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    inputs = prompt[str(node)]["inputs"]
    assert {k: inputs[k] for k in PROMPT_WIDGETS} == values
    assert "prompt_editor" not in inputs
    if artifacts_dir is not None:
        page.screenshot(path=str(artifacts_dir / "editor_points_and_boxes.png"),
                        clip={"x": 40, "y": 80, "width": 940, "height": 720})

    before = set(server.get_json("/history"))
    # (1.27's app.queuePrompt answers false even on success: it reads the server's empty
    # node_errors {} as errors; the history below is what tells)
    page.evaluate("async () => { await app.queuePrompt(0, 1); }")
    entry, started, deadline = None, time.monotonic(), time.monotonic() + 240
    while entry is None and time.monotonic() < deadline:
        new = [pid for pid in server.get_json("/history") if pid not in before]
        entry = server.history(new[0]) if new else None
        if entry is not None and entry.get("status", {}).get("status_str") is None:
            entry = None  # still running
        queue = server.queue()
        if not new and not queue["queue_running"] and not queue["queue_pending"] and time.monotonic() - started > 10:
            break  # nothing ran, nothing is queued: the page did not send it
        time.sleep(0.25)
    if entry is None:
        try:
            server.queue_prompt(prompt)
            reason = "the server accepts the same prompt when posted directly"
        except Exception as exc:  # noqa: BLE001 - only to explain the failure
            reason = str(exc)
        raise AssertionError(f"the page's queued prompt never finished ({reason}); log:\n{server.log_tail()}")
    queued = entry["prompt"][2][str(node)]["inputs"]
    assert {k: queued[k] for k in PROMPT_WIDGETS} == values
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    # the workflow the page sent along (embedded in saved images) holds the prompts too
    sent = entry["prompt"][3]["extra_pnginfo"]["workflow"]
    sent_node = next(n for n in sent["nodes"] if n["id"] == node)
    assert sent_node["widgets_values"][3:6] == [values[k] for k in PROMPT_WIDGETS]
    assert not page.page_errors, page.page_errors


def test_leaves_prompts_it_cannot_show_alone_until_cleared(page):
    node = page.evaluate(BUILD_GRAPH, [IMAGE_NAME])
    wait_for_image(page, node)
    per_image = {"box_prompt": "[[0,0,0,0]]", "point_prompt": "[[[10,10]],[[20,20]]]", "point_label": "[[1],[0]]"}
    page.evaluate(
        """([id, values]) => { const n = app.graph.getNodeById(id);
             for (const [k, v] of Object.entries(values)) n.widgets.find((w) => w.name === k).value = v; }""",
        [node, per_image],
    )
    settle(page)
    shown = ImageOnScreen(page, node)
    page.mouse.click(*shown.at(100, 100))
    drag(page, shown.at(10, 10), shown.at(100, 100))
    assert widget_values(page, node) == per_image  # the editor must not overwrite per-image lists
    status = page.evaluate(
        "(id) => app.graph.getNodeById(id).widgets.find((w) => w.name === 'prompt_editor').element.textContent", node)
    assert "per-image" in status

    editor = page.locator("[data-samkit-editor]")
    editor.get_by_role("button", name="Clear").click()
    assert widget_values(page, node) == {"box_prompt": "[[0,0,0,0]]", "point_prompt": "[[0,0]]", "point_label": "[0]"}
    page.mouse.click(*shown.at(0, 0))  # the corner pixel: [0,0] means "no point" to fal, so it moves one pixel
    assert widget_values(page, node)["point_prompt"] == "[[1,0]]"
    # beside the image, in the canvas' letterbox band: nothing
    rect = shown.rect
    if shown.top - rect["y"] >= 4:
        beside = (rect["x"] + rect["width"] / 2, (rect["y"] + shown.top) / 2)
    else:
        assert shown.left - rect["x"] >= 4, f"the image fills the editor exactly; no letterbox to click: {rect}"
        beside = ((rect["x"] + shown.left) / 2, rect["y"] + rect["height"] / 2)
    page.mouse.click(*beside)
    assert widget_values(page, node)["point_prompt"] == "[[1,0]]"
    assert not page.page_errors, page.page_errors


def test_prompt_text_round_trip(page):
    """The editor's parser and writer (exported by the module) on fal's formats."""
    result = page.evaluate("""async () => {
      const m = await import(new URL("/extensions/comfyui-sam-kit/js/tiny_sam_editor.js", location.href).href);
      const errorOf = (...args) => { try { m.parsePrompts(...args); return null; } catch (e) { return e.message; } };
      return {
        sentinels: m.parsePrompts("[[0,0,0,0]]", "[[0,0]]", "[0]"),
        empty: m.formatPrompts({ points: [], boxes: [] }),
        sentinelInside: m.parsePrompts("[[1, 2, 3, 4]]", "[[5,6],[0,0],[7,8]]", "[1,0,0]"),
        written: m.formatPrompts({ points: [{ x: 5, y: 6, label: 1 }, { x: 7, y: 8, label: 0 }], boxes: [{ x: 1, y: 2, w: 3, h: 4 }] }),
        mismatch: errorOf("[]", "[[5,6]]", "[1,0]"),
        perImage: errorOf("[[[1,2,3,4]],[[1,2,3,4]]]", "[[0,0]]", "[0]"),
        badJson: errorOf("[[1,2,3,4]", "[[0,0]]", "[0]"),
        reversedBox: m.boxBetween(m.fitImage(320, 200, 640, 400), 320, 200, { x: 300, y: 300 }, { x: 100, y: -50 }),
      };
    }""")
    assert result["sentinels"] == {"points": [], "boxes": []}
    assert result["empty"] == {"box_prompt": "[[0,0,0,0]]", "point_prompt": "[[0,0]]", "point_label": "[0]"}
    assert result["sentinelInside"]["points"] == [{"x": 5, "y": 6, "label": 1}, {"x": 7, "y": 8, "label": 0}]
    assert result["sentinelInside"]["boxes"] == [{"x": 1, "y": 2, "w": 3, "h": 4}]
    assert result["written"] == {"box_prompt": "[[1,2,3,4]]", "point_prompt": "[[5,6],[7,8]]", "point_label": "[1,0]"}
    assert "point_label" in result["mismatch"]
    assert "box_prompt" in result["perImage"]
    assert "box_prompt" in result["badJson"]
    assert result["reversedBox"] == {"x": 50, "y": 0, "w": 100, "h": 150}


def test_fal_tiny_sam_node_has_the_same_editor(page):
    node = page.evaluate(BUILD_GRAPH, [IMAGE_NAME, "SamKitFalTinySAM"])
    wait_for_image(page, node)
    shown = check_shown_image(page, node)
    page.mouse.click(*shown.at(90, 100))
    page.mouse.click(*shown.at(240, 105), button="right")
    drag(page, shown.at(180, 50), shown.at(300, 160))
    values = widget_values(page, node)
    assert_close(values["point_prompt"], [[90, 100], [240, 105]], "point_prompt")
    assert json.loads(values["point_label"]) == [1, 0]
    assert_close(values["box_prompt"], [[180, 50, 120, 110]], "box_prompt")
    check_markers(page, node, [[90, 100], [240, 105]], [1, 0])
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert {k: prompt[str(node)]["inputs"][k] for k in PROMPT_WIDGETS} == values
    assert not page.page_errors, page.page_errors
