"""Page helpers for the Tiny SAM editor's browser tests (tests/integration/test_web_editor.py).

The page is ``conftest.page``: a real ComfyUI page whose ``page.frontend.vue_nodes`` says whether
Nodes 2.0 draws the nodes. Everything here works on both renderers; where they differ (typing into
a widget, where a node sits on screen) the helper does what a user of that renderer does.

* ``build_graph(page, image, node_type)``: Load Image → Tiny SAM → Preview (+ model loader); the
  Tiny SAM node's id, as a string (1.58 keeps node ids as strings at run time).
* ``assert_clean_console``, ``widget_values``, ``editor_state``, ``wait_for_editor`` / ``wait_for_state`` / ``wait_for_image``, ``settle``,
  ``set_view``, ``record_undo_state``, ``type_into_widget``, ``node_clip``.
* ``ImageOnScreen``: where the editor must show an image of a given size; ``check_shown_image``,
  ``check_markers``: pixel checks against the 320×200 test image and the marker colours.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from . import browser
from . import comfy_assets as A

W, H = A.EDITOR_SIZE
RED, GREEN, BACKGROUND = (A.EDITOR_COLOURS[k] for k in ("ellipse", "rectangle", "background"))
POSITIVE_DOT, NEGATIVE_DOT = (0x2E, 0xCC, 0x40), (0xFF, 0x41, 0x36)  # the editor's marker colours
PROMPT_WIDGETS = ("box_prompt", "point_prompt", "point_label")
NO_PROMPTS = {"box_prompt": "[[0,0,0,0]]", "point_prompt": "[[0,0]]", "point_label": "[0]"}

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
  return String(sam.id);
}"""

# the editor element of node `id` as the page shows it (JS expression over `id`)
EDITOR_OF = "app.graph.getNodeById(id)?.widgets?.find((w) => w.name === 'prompt_editor')?.element"


def build_graph(page, image: str = A.EDITOR_IMAGE, node_type: str = "SamKitTinySAM") -> str:
    return page.evaluate(BUILD_GRAPH, [image, node_type])


def tiny_sam_id(page) -> str:
    return page.evaluate("String(app.graph.nodes.find((n) => n.comfyClass === 'SamKitTinySAM').id)")


def widget_values(page, node_id) -> dict:
    return page.evaluate(
        """([id, names]) => Object.fromEntries(names.map(
             (n) => [n, app.graph.getNodeById(id).widgets.find((w) => w.name === n).value]))""",
        [node_id, list(PROMPT_WIDGETS)],
    )


def editor_state(page, node_id) -> dict:
    """What the editor of the node shows (status text, parsed prompts), and how many editors are on the page."""
    return page.evaluate(
        f"""(id) => {{ const n = app.graph.getNodeById(id); const el = {EDITOR_OF};
                     const c = el?.querySelector("canvas");
                     const state = el?.dataset?.state ? JSON.parse(el.dataset.state) : null;
                     return {{ exists: !!el, connected: !!el?.isConnected, text: el?.textContent ?? null, state,
                              canvasWidth: c?.clientWidth ?? 0, size: n ? [...n.size] : null,
                              shownEditors: [...document.querySelectorAll("[data-samkit-editor]")].map((e) => e.textContent.slice(0, 60)),
                              image: n?.getInputNode?.(n.inputs.findIndex((i) => i.name === "image"))?.widgets?.[0]?.value ?? null }}; }}""",
        node_id)


def wait_for_editor(page, node_id, condition: str, what: str, timeout_ms: int = 10_000) -> None:
    """Until JS ``condition`` (over ``el``, the node's editor element, and ``state``, its parsed state) holds."""
    try:
        page.wait_for_function(
            f"""(id) => {{ const el = {EDITOR_OF};
                          if (!el || !el.isConnected) return false;
                          const state = JSON.parse(el.dataset.state || "null");
                          return !!({condition}); }}""",
            arg=node_id, timeout=timeout_ms)
    except Exception as exc:
        raise AssertionError(f"{what}: {editor_state(page, node_id)}") from exc


def wait_for_state(page, node_id, predicate, what: str, timeout_s: float = 10.0) -> dict:
    """Poll ``editor_state`` (bounded) until ``predicate(state)`` holds; the state, or an AssertionError saying ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = editor_state(page, node_id)
        if state["connected"] and state["state"] is not None and predicate(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {state}")
        page.wait_for_timeout(100)


def wait_for_image(page, node_id, size=(W, H)) -> None:
    """Until the editor shows an input image of ``size`` and the canvas has settled after layout."""
    wait_for_editor(page, node_id, f"el.textContent.includes('{size[0]}×{size[1]}') && el.querySelector('canvas').clientWidth > 0",
                    f"the editor did not show the {size[0]}×{size[1]} input image", timeout_ms=30_000)
    settle(page)


def set_view(page, scale: float, offset: list) -> None:
    page.evaluate("([s, o]) => { app.canvas.ds.scale = s; app.canvas.ds.offset = o; app.canvas.setDirty(true, true); }", [scale, offset])
    settle(page)


def settle(page) -> None:
    page.evaluate("app.graph.setDirtyCanvas(true, true)")
    page.evaluate("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.wait_for_timeout(150)


def record_undo_state(page) -> None:
    """Let the workflow's change tracker take the graph as it is now as an undo state."""
    page.evaluate("""() => { const t = app.extensionManager.workflow.activeWorkflow.changeTracker;
                             (t.captureCanvasState ?? t.checkState).call(t); }""")


def node_clip(page, node_id, margin: int = 40) -> dict:
    """The node's on-screen rectangle (plus a margin), for screenshots that frame it on any layout."""
    rect = page.evaluate(
        """(id) => { const n = app.graph.getNodeById(id); const ds = app.canvas.ds;
                     const r = app.canvas.canvas.getBoundingClientRect();
                     const title = LiteGraph.NODE_TITLE_HEIGHT;
                     return { x: r.left + (n.pos[0] + ds.offset[0]) * ds.scale, y: r.top + (n.pos[1] - title + ds.offset[1]) * ds.scale,
                              width: n.size[0] * ds.scale, height: (n.size[1] + title) * ds.scale }; }""", node_id)
    view = page.viewport_size
    x, y = max(0, rect["x"] - margin), max(0, rect["y"] - margin)
    return {"x": x, "y": y, "width": min(view["width"] - x, rect["width"] + 2 * margin),
            "height": min(view["height"] - y, rect["height"] + 2 * margin)}


def type_into_widget(page, node_id, name: str, text: str) -> None:
    """Type ``text`` into a STRING widget as a user would: the Vue node's input in Nodes 2.0, else
    LiteGraph's prompt dialog, opened by clicking the widget on the canvas."""
    if page.frontend.vue_nodes:
        field = page.locator(f'[data-node-id="{node_id}"] [aria-label="{name}"]')
        field.click()
        field.fill(text)
        field.press("Enter")
        field.evaluate("(e) => e.blur()")
    else:
        at = page.evaluate(
            """([id, name]) => { const n = app.graph.getNodeById(id); const w = n.widgets.find((w) => w.name === name);
                                 const ds = app.canvas.ds; const r = app.canvas.canvas.getBoundingClientRect();
                                 const y = (w.last_y ?? w.y) + LiteGraph.NODE_WIDGET_HEIGHT / 2;
                                 return [r.left + (n.pos[0] + n.size[0] / 2 + ds.offset[0]) * ds.scale,
                                         r.top + (n.pos[1] + y + ds.offset[1]) * ds.scale]; }""", [node_id, name])
        page.mouse.click(*at)
        field = page.locator(".graphdialog input.value")
        field.wait_for(timeout=5_000)
        field.fill(text)
        field.press("Enter")
    page.wait_for_function(
        "([id, name, text]) => app.graph.getNodeById(id).widgets.find((w) => w.name === name).value === text",
        arg=[node_id, name, text], timeout=5_000)


def assert_clean_console(page) -> None:
    """No uncaught exception in the page, and nothing the pack's scripts logged as an error or warning."""
    assert not page.page_errors, page.page_errors
    assert not page.pack_console, page.pack_console


class ImageOnScreen:
    """Where the editor must show a width×height image: whole, centred, aspect kept, in the canvas' on-screen box."""

    def __init__(self, page, node_id, size=(W, H)):
        rect, css_width = page.evaluate(
            f"""(id) => {{ const c = {EDITOR_OF}.querySelector("canvas");
                          return [c.getBoundingClientRect().toJSON(), c.clientWidth]; }}""",
            node_id,
        )
        width, height = size
        self.rect = rect
        self.zoom = rect["width"] / css_width  # screen px per CSS px of the editor (canvas zoom)
        self.scale = min(rect["width"] / width, rect["height"] / height)
        self.left = rect["x"] + (rect["width"] - width * self.scale) / 2
        self.top = rect["y"] + (rect["height"] - height * self.scale) / 2

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
    """The displayed 320×200 test image sits where ImageOnScreen says: sample the ellipse, the rectangle and the background."""
    shown = ImageOnScreen(page, node_id)
    shot = browser.screenshot_rgb(page)
    assert_colour(shot, shown.at(60, 100), RED, "ellipse (image pixel 60,100)")
    assert_colour(shot, shown.at(280, 140), GREEN, "rectangle (image pixel 280,140)")
    assert_colour(shot, shown.at(170, 185), BACKGROUND, "background (image pixel 170,185)")
    assert_colour(shot, shown.at(5, 5), BACKGROUND, "top-left corner of the image")
    assert_colour(shot, shown.at(W - 3, H - 3), BACKGROUND, "bottom-right corner of the image")
    return shown


def check_markers(page, node_id, points: list, labels: list, size=(W, H)) -> None:
    """Each point's dot is drawn over its pixel (sampled between the white +/− sign and the rim)."""
    shown = ImageOnScreen(page, node_id, size)
    shot = browser.screenshot_rgb(page)
    for (x, y), label in zip(points, labels):
        cx, cy = shown.at(x, y)
        # inside the dot (radius 6), clear of its white rim (5.25-6.75) and of the +/− strokes (±0.75):
        # 2 px down and right, 2.8 from the centre, leaves room for the blur of a canvas that Nodes 2.0
        # scales by a fraction (2.5 px sampled the rim's blur there once the node grew a widget)
        off = 2.0 * shown.zoom
        assert_colour(shot, (cx + off, cy + off), POSITIVE_DOT if label == 1 else NEGATIVE_DOT, f"marker of point {x},{y}")
