"""The Tiny SAM point/box editor (web/js/) in the real ComfyUI page.

Headless Debian Chromium through Playwright against a real ComfyUI server (see conftest.py) with
the pack installed; every test runs on each frontend and renderer conftest offers (the bundled
frontend's classic canvas; with SAMKIT_FRONTEND_ROOT, a newer frontend on its classic canvas and
with Nodes 2.0). The graph is set up through the page's ``app`` object; every prompt edit is a
real mouse event on the editor's canvas (typing goes through the renderer's own text inputs), and
expectations come from the image alone: a 320×200 test image (not square, so a wrong scale or
offset shows) is shown whole and centred, so the test works out independently where each image
pixel lands on screen and checks both what is drawn there and what the widgets say.

The kind the tests pin down: the editor stays in step with its three prompt widgets (typed,
set from code, undone, redone) and with its upstream image, and never writes over text it cannot
show, under every renderer.

Needs COMFYUI_PATH (and COMFYUI_PYTHON if ComfyUI's requirements live elsewhere), playwright
and Debian's chromium; skipped with the reason otherwise. With SAMKIT_TEST_ARTIFACTS set,
screenshots of the editor are saved there.
"""

from __future__ import annotations

import json
import time

import pytest

from comfyui_sam_kit.samkit.sampling_params import DEFAULT_SAMPLING
from testsupport import browser
from testsupport import comfy_assets as A
from testsupport.editor_page import (
    EDITOR_OF, NO_PROMPTS, PROMPT_WIDGETS, ImageOnScreen, assert_clean_console, assert_close, assert_colour, build_graph, check_markers, check_shown_image,
    drag, editor_state, node_clip, record_undo_state, set_view, settle, tiny_sam_id, type_into_widget,
    wait_for_image, wait_for_state, widget_values,
)

IMAGE_NAME = A.EDITOR_IMAGE

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(browser.skip_reason() is not None, reason=str(browser.skip_reason())),
]


# ---------------------------------------------------------------------------- tests
def test_click_drag_resize_save_load_and_queue(page, artifacts_dir):
    server = page.comfy_server
    node = build_graph(page)
    wait_for_image(page, node)
    assert widget_values(page, node) == NO_PROMPTS
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

    # the live preview tints the image under the masks (test_preview_browser.py); off, the image shows as it
    # is, and the choice is saved with the workflow
    page.evaluate(f"(id) => {EDITOR_OF}.querySelector('input[type=checkbox]').click()", node)
    page.wait_for_function(f"(id) => {EDITOR_OF} && !app.graph.getNodeById(id).samkitEditor.preview.layer", arg=node, timeout=10_000)

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
    # the optional `sampling` combo (everything mode, no prompt) is a widget too, at its default
    assert saved["widgets_values"] == [1024, 0.4, 0.9, values["box_prompt"], values["point_prompt"], values["point_label"],
                                       DEFAULT_SAMPLING]
    page.evaluate("() => app.graph.clear()")
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    set_view(page, 1, [-380, 0])
    node = tiny_sam_id(page)
    wait_for_image(page, node)
    assert widget_values(page, node) == values
    assert page.evaluate(f"(id) => {EDITOR_OF}.querySelector('input[type=checkbox]').checked", node) is False
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
        page.screenshot(path=str(artifacts_dir / f"editor_points_and_boxes_{page.frontend}.png"),
                        clip=node_clip(page, node))

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
    sent_node = next(n for n in sent["nodes"] if str(n["id"]) == node)
    assert sent_node["widgets_values"][3:6] == [values[k] for k in PROMPT_WIDGETS]
    assert_clean_console(page)


def test_leaves_prompts_it_cannot_show_alone_until_cleared(page):
    node = build_graph(page)
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
    assert widget_values(page, node) == NO_PROMPTS
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
    assert_clean_console(page)


def test_prompt_text_round_trip(page):
    """The editor's parser and writer (exported by the module) on fal's formats, with the "no prompt"
    texts read from the node definition the server sends (as the editor reads them)."""
    result = page.evaluate("""async () => {
      const m = await import(new URL("/extensions/comfyui-sam-kit/js/prompts.js", location.href).href);
      const defs = await (await fetch(new URL("/object_info/SamKitTinySAM", location.href))).json();
      const config = m.promptConfig(defs.SamKitTinySAM);
      const errorOf = (...args) => { try { m.parsePrompts(...args, config); return null; } catch (e) { return e.message; } };
      return {
        sentinels: m.parsePrompts("[[0,0,0,0]]", "[[0,0]]", "[0]", config),
        empty: m.formatPrompts({ points: [], boxes: [] }, config),
        sentinelInside: m.parsePrompts("[[1, 2, 3, 4]]", "[[5,6],[0,0],[7,8]]", "[1,0,0]", config),
        written: m.formatPrompts({ points: [{ x: 5, y: 6, label: 1 }, { x: 7, y: 8, label: 0 }], boxes: [{ x: 1, y: 2, w: 3, h: 4 }] }, config),
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
    node = build_graph(page, node_type="SamKitFalTinySAM")
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
    assert_clean_console(page)


# ---------------------------------------------------------------------------- staying in step with the widgets
# Each member: how the prompt widgets get their text (typed by the user, or set by code without any
# event or redraw), the values typed, what the editor must then show (None: no waiting, click at
# once), where the next click lands (image pixel), and the widget values after that click (None:
# the editor must refuse the click and a drag, and leave the text alone).
IN_STEP = {
    "typed point": ("typed", {"point_prompt": "[[100,50]]", "point_label": "[1]"},
                    {"points": [{"x": 100, "y": 50, "label": 1}], "boxes": []},
                    (200, 120), {"point_prompt": [[100, 50], [200, 120]], "point_label": [1, 1], "box_prompt": [[0, 0, 0, 0]]}),
    "typed box": ("typed", {"box_prompt": "[[20,30,100,80]]"},
                  {"points": [], "boxes": [{"x": 20, "y": 30, "w": 100, "h": 80}]},
                  (250, 170), {"point_prompt": [[250, 170]], "point_label": [1], "box_prompt": [[20, 30, 100, 80]]}),
    "typed per-image lists": ("typed", {"point_prompt": "[[[10,10]],[[20,20]]]", "point_label": "[[1],[0]]"},
                              "per-image", (100, 100), None),
    "set from code": ("code", {"point_prompt": "[[60,100],[280,140]]", "point_label": "[1,0]"},
                      {"points": [{"x": 60, "y": 100, "label": 1}, {"x": 280, "y": 140, "label": 0}], "boxes": []},
                      (170, 185), {"point_prompt": [[60, 100], [280, 140], [170, 185]], "point_label": [1, 0, 1],
                                   "box_prompt": [[0, 0, 0, 0]]}),
    # clicked before anything could have redrawn or polled: the edit itself must start from the widgets
    "set from code, clicked at once": ("code", {"box_prompt": "[[200,40,80,120]]"}, None,
                                       (30, 170), {"point_prompt": [[30, 170]], "point_label": [1], "box_prompt": [[200, 40, 80, 120]]}),
}


@pytest.mark.parametrize("member", list(IN_STEP))
def test_prompts_typed_or_set_elsewhere_are_shown_and_kept(page, member):
    how, entered, shows, click, after = IN_STEP[member]
    node = build_graph(page)
    wait_for_image(page, node)
    shown = ImageOnScreen(page, node)  # the prompts do not move the image
    for name, text in entered.items():
        if how == "typed":
            type_into_widget(page, node, name, text)
        else:  # what another extension or a script does: no callback, no event, no redraw
            page.evaluate("([id, name, text]) => { app.graph.getNodeById(id).widgets.find((w) => w.name === name).value = text; }",
                          [node, name, text])
    typed = {**NO_PROMPTS, **entered}
    if shows is None:
        assert widget_values(page, node) == typed  # and straight on to the click
    elif shows == "per-image":
        wait_for_state(page, node, lambda s: "per-image" in (s["state"]["error"] or ""),
                       "the editor does not say it leaves the per-image lists alone")
    else:
        state = wait_for_state(page, node, lambda s: {k: s["state"][k] for k in ("points", "boxes")} == shows,
                               f"the editor does not show the {member}")
        assert state["state"]["error"] is None
        check_markers(page, node, [[p["x"], p["y"]] for p in shows["points"]], [p["label"] for p in shows["points"]])

    page.mouse.click(*shown.at(*click))
    if after is None:
        drag(page, shown.at(10, 10), shown.at(100, 100))
        assert widget_values(page, node) == typed, "the editor overwrote prompts it cannot show"
    else:
        values = widget_values(page, node)
        assert json.loads(values["point_label"]) == after["point_label"], values
        for name in ("point_prompt", "box_prompt"):
            assert_close(values[name], after[name], f"{name} after a click on top of the {member}")
        wait_for_state(page, node, lambda s: len(s["state"]["points"]) == len(after["point_label"]),
                       "the editor does not show the click")
    assert_clean_console(page)


# ---------------------------------------------------------------------------- staying in step with the image
CHANGE_UPSTREAM = {
    # another file chosen in the Load Image node (its combo's callback, as the renderers' pickers call it)
    "another file": """([id, name]) => { const load = app.graph.nodes.find((n) => n.type === "LoadImage");
        const w = load.widgets.find((w) => w.name === "image"); w.value = name; w.callback?.(w.value); }""",
    # a different node type feeds `image`: Load Image (from Outputs), whose values carry " [output]";
    # its list comes from the server and then selects the first file, so choose ours once it is listed
    "load image from outputs": """async ([id, name]) => { const sam = app.graph.getNodeById(id);
        const n = LiteGraph.createNode("LoadImageOutput"); n.pos = [40, 420]; app.graph.add(n);
        n.connect(0, sam, sam.inputs.findIndex((i) => i.name === "image"));
        const w = n.widgets.find((w) => w.name === "image"), file = `${name} [output]`;
        const listed = () => { const v = w.options.values; return (typeof v === "function" ? v() : v) ?? []; };
        for (let i = 0; i < 100 && !listed().includes(file); i++) await new Promise((done) => setTimeout(done, 100));
        await new Promise((done) => setTimeout(done, 300));
        w.value = file; w.callback?.(w.value); }""",
    # a legacy Reroute node in between, then (once the rewiring has been seen) another file upstream of it
    "through a reroute": """async ([id, name]) => { const sam = app.graph.getNodeById(id);
        const load = app.graph.nodes.find((n) => n.type === "LoadImage");
        const r = LiteGraph.createNode("Reroute"); r.pos = [330, 300]; app.graph.add(r);
        load.connect(0, r, 0); r.connect(0, sam, sam.inputs.findIndex((i) => i.name === "image"));
        await new Promise((done) => setTimeout(done, 500));
        const w = load.widgets.find((w) => w.name === "image"); w.value = name; w.callback?.(w.value); }""",
}


@pytest.mark.parametrize("member", list(CHANGE_UPSTREAM))
def test_editor_follows_a_new_upstream_image(page, member):
    node = build_graph(page)
    wait_for_image(page, node)
    page.mouse.click(*ImageOnScreen(page, node).at(90, 100))
    page.evaluate(CHANGE_UPSTREAM[member], [node, A.EDITOR_IMAGE_2])
    wait_for_image(page, node, A.EDITOR_SIZE_2)

    # the new image is what is drawn, where a 200×300 image must sit: each quadrant near its corners
    w, h = A.EDITOR_SIZE_2
    shown = ImageOnScreen(page, node, A.EDITOR_SIZE_2)
    shot = browser.screenshot_rgb(page)
    for i, colour in enumerate(A.EDITOR_QUADRANTS):
        x0, y0 = (i % 2) * w // 2, (i // 2) * h // 2
        for x, y in ((x0 + 3, y0 + 3), (x0 + w // 2 - 4, y0 + h // 2 - 4)):
            assert_colour(shot, shown.at(x, y), colour, f"quadrant {i} of the new image at pixel {x},{y} ({member})")

    # clicks are in the new image's pixels; the earlier point (the user's choice) stays
    page.mouse.click(*shown.at(150, 260))
    values = widget_values(page, node)
    assert_close(values["point_prompt"], [[90, 100], [150, 260]], f"point_prompt after the upstream change ({member})")
    assert json.loads(values["point_label"]) == [1, 1]
    assert_clean_console(page)


# ---------------------------------------------------------------------------- undo and redo
def _wait_for_points(page, expected: list, what: str) -> str:
    """Until the (possibly rebuilt) Tiny SAM node holds `expected` points and its editor, alone on the page, shows them."""
    deadline = time.monotonic() + 10
    while True:
        node = tiny_sam_id(page)
        values, state = widget_values(page, node), editor_state(page, node)
        points = json.loads(values["point_prompt"])
        if (points == expected and state["connected"] and len(state["shownEditors"]) == 1
                and state["state"] and [[p["x"], p["y"]] for p in state["state"]["points"]] == expected):
            return node
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: widgets {values}, editor {state}")
        page.wait_for_timeout(100)


def test_undo_and_redo_after_clicks_keep_a_working_editor(page):
    node = build_graph(page)
    wait_for_image(page, node)
    record_undo_state(page)
    shown = ImageOnScreen(page, node)
    page.mouse.click(*shown.at(90, 100))
    page.mouse.click(*shown.at(240, 105))
    first, second = json.loads(widget_values(page, node)["point_prompt"])

    page.keyboard.press("Control+z")
    node = _wait_for_points(page, [first], "after undo, the editor on screen is not the current node's")
    page.keyboard.press("Control+y")
    node = _wait_for_points(page, [first, second], "after redo, the editor on screen is not the current node's")

    page.mouse.click(*ImageOnScreen(page, node).at(200, 60))  # the editor on screen edits the live node
    values = widget_values(page, node)
    assert_close(values["point_prompt"], [first, second, [200, 60]], "a click after undo and redo")
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert {k: prompt[node]["inputs"][k] for k in PROMPT_WIDGETS} == values
    page.keyboard.press("Control+z")
    _wait_for_points(page, [first, second], "the click after redo is not one undo step")
    assert_clean_console(page)


# ---------------------------------------------------------------------------- no deprecated frontend API
SPY_ON_INPUT_LINK = """(id) => {
  const node = app.graph.getNodeById(id);
  const editor = node.samkitEditor;
  let proto = Object.getPrototypeOf(node.inputs[0]);
  while (proto && !Object.getOwnPropertyDescriptor(proto, "link")) proto = Object.getPrototypeOf(proto);
  const getter = proto && Object.getOwnPropertyDescriptor(proto, "link").get;
  if (!getter) return null;  // a plain data property: this frontend has nothing deprecated here
  let reads = 0;
  for (const input of node.inputs)
    Object.defineProperty(input, "link", { configurable: true, get() { reads++; return getter.call(this); } });
  try {
    editor.widgetKey = null;  // make sync() re-read everything, then draw the status line
    editor.sync();
    editor.draw();
    return reads;
  } finally {
    for (const input of node.inputs) delete input.link;
  }
}"""


def test_editor_reads_connections_without_the_deprecated_input_link(page):
    """1.58 deprecates input.link (a getter that warns once); the editor asks node.isInputConnected."""
    node = build_graph(page)
    wait_for_image(page, node)
    reads = page.evaluate(SPY_ON_INPUT_LINK, node)
    if reads is None:
        pytest.skip(f"{page.frontend}: input.link is a plain property here, not deprecated")
    assert reads == 0, f"the editor read input.link {reads} times while syncing and drawing"
    assert_clean_console(page)
