"""The Tiny SAM editor's live mask preview (web/js/mask_preview.js, POST /samkit/preview) in the real page.

Real ComfyUI, real Chromium (conftest.py), every frontend and renderer conftest offers. Clicks and
drags are real mouse events on the editor's canvas; the preview's masks come from the pack's
route, which runs the node's own code on the Load SAM Model node's model. What is pinned down:

* a preview appears after a click, follows a negative click and a box, and is drawn where the
  masks are, in the node's colours (screen pixels checked against the image and the colour);
* the queued run afterwards outputs exactly the masks the preview showed (pixel for pixel), for
  the SAM family and for FastSAM (the trained fixtures of tests/testmodels, which segment the
  shapes scene for real);
* the preview clears the moment the image changes, and a model the route refuses gives a
  readable line in the editor;
* click → overlay latency with MobileSAM's architecture on a 1024² image, embedding cached:
  printed (``-s`` shows it), not asserted: timings on shared CI machines are not a test.

With SAMKIT_TEST_ARTIFACTS set, screenshots are kept there (``live_preview_<frontend>.png`` is the
README's picture, docs/images/live_preview.png).
"""

from __future__ import annotations

import base64
import io
import json
import statistics

import numpy as np
import pytest
from PIL import Image

from testsupport import browser
from testsupport import comfy_assets as A
from testsupport.comfyui import output_images
from testsupport.editor_page import (
    PROMPT_WIDGETS, ImageOnScreen, assert_clean_console, build_graph, drag, node_clip, settle,
    wait_for_image, widget_values,
)
from testsupport.trained import interior_point
from testsupport.trained_fastsam import FASTSAM_SETTINGS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(browser.skip_reason() is not None, reason=str(browser.skip_reason())),
]

SCENE_SIZE = (256, 256)
# shapes of the scene (comfy_assets.scene()) clicked, right-clicked and boxed: apart from each other, and
# of colours the node's first two object colours (olive, teal) show up on
CLICKED, EXCLUDED, BOXED = 4, 1, 5
MOBILE_SAM = "mobile_sam_arch_test.pth"  # MobileSAM's architecture with random weights (written below)

ADD_MASK_SAVE = """([id, model, widgets]) => {
  const sam = app.graph.getNodeById(id);
  const loader = sam.getInputNode(sam.inputs.findIndex((i) => i.name === "model"));
  loader.widgets.find((w) => w.name === "model_name").value = model;
  for (const [name, value] of Object.entries(widgets)) sam.widgets.find((w) => w.name === name).value = value;
  sam.setSize([Math.max(sam.size[0], 480), Math.max(sam.size[1], 800)]);  // a larger editor: clearer screenshots
  const add = (type, x, y) => { const n = LiteGraph.createNode(type); n.pos = [x, y]; app.graph.add(n); return n; };
  const toImage = add("MaskToImage", 1500, 400);
  const save = add("SaveImage", 1800, 400);
  sam.connect(sam.outputs.findIndex((o) => o.name === "object_masks"), toImage, 0);
  toImage.connect(0, save, 0);
  save.widgets.find((w) => w.name === "filename_prefix").value = "samkit_preview_match";
  app.graph.setDirtyCanvas(true, true);
  return String(save.id);
}"""

PREVIEW_OF = "app.graph.getNodeById(id).samkitEditor.preview"


def preview_state(page, node) -> dict:
    return page.evaluate(f"(id) => JSON.parse({PREVIEW_OF}.editor.root.dataset.preview || 'null')", node)


def wait_for_preview(page, node, what: str, timeout_s: float = 120.0) -> dict:
    """Until the preview shows the masks for the widgets' current prompts; its state."""
    try:
        page.wait_for_function(
            f"""([id, names]) => {{ const p = {PREVIEW_OF}; const s = JSON.parse(p.editor.root.dataset.preview || "null");
                  const n = app.graph.getNodeById(id);
                  const now = names.map((k) => String(n.widgets.find((w) => w.name === k).value));
                  return !!s && s.state === "shown" && JSON.stringify(s.prompts) === JSON.stringify(now) && !!p.layer; }}""",
            arg=[node, list(PROMPT_WIDGETS)], timeout=timeout_s * 1000, polling=20)
    except Exception as exc:
        raise AssertionError(f"{what}: {preview_state(page, node)}; widgets {widget_values(page, node)}") from exc
    return preview_state(page, node)


def shown_answer(page, node) -> dict:
    return page.evaluate(f"(id) => {{ const l = {PREVIEW_OF}.last; return {{ ...l, request: l.request }}; }}", node)


def masks_of(answer) -> np.ndarray:
    """The preview's objects as full-size bool masks [N,H,W] (each is a 1-bit PNG of its box)."""
    out = np.zeros((len(answer["objects"]), answer["height"], answer["width"]), dtype=bool)
    for i, obj in enumerate(answer["objects"]):
        x0, y0, x1, y1 = obj["box"]
        with Image.open(io.BytesIO(base64.b64decode(obj["png"]))) as im:
            out[i, y0 : y1 + 1, x0 : x1 + 1] = np.asarray(im) > 0  # palette indices: 1 = mask
    return out


def _inner(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 5x5 neighbourhood is all in ``mask``: clear of edges, where the scaled drawing blends."""
    inner = mask.copy()
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            inner &= np.roll(np.roll(mask, dy, 0), dx, 1)
    return inner


BOX_FILL, BOX_FILL_ALPHA = np.array([63, 169, 255]), 0.15  # the editor's box prompt, drawn over the preview


def check_overlay(page, node, answer, image: np.ndarray, markers, boxes=()) -> None:
    """Inside each object and outside all of them, the screen shows the image as the node's combined image
    does: tinted by the top object's colour at the node's alpha, or untouched (then the editor's box fill,
    inside ``boxes`` [x, y, w, h]). Sampled pixels keep clear of mask edges and of the point markers; as a
    screen pixel may show a neighbouring image pixel (scaling), each channel must lie within what the
    3x3 neighbourhood gives, give or take 8 levels (canvas blending rounds to 8 bits)."""
    masks = masks_of(answer)
    h, w = masks.shape[1:]
    shown = ImageOnScreen(page, node, (w, h))
    ys, xs = np.mgrid[0:h, 0:w]
    clear = np.ones((h, w), dtype=bool)
    for x, y in markers:  # 12 CSS px around each marker (6 px radius plus its rim)
        clear &= np.hypot(xs - x, ys - y) * shown.scale / shown.zoom > 12
    top = np.full((h, w), -1)
    for i in answer["paint_order"]:
        top[masks[i]] = i
    shot = browser.screenshot_rgb(page)
    checked = []
    for i in [*range(len(masks)), -1]:
        candidates = np.argwhere(_inner(top == i) & clear)
        if not len(candidates):  # (FastSAM: an instance may lie wholly under a smaller one, or under a marker)
            continue
        checked.append(i)
        y, x = candidates[len(candidates) // 2]
        expected = image[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).astype(float)
        if i >= 0:
            expected = expected * (1 - answer["alpha"]) + np.array(answer["objects"][i]["colour"]) * answer["alpha"]
        for bx, by, bw, bh in boxes:
            if bx <= x < bx + bw and by <= y < by + bh:
                expected = expected * (1 - BOX_FILL_ALPHA) + BOX_FILL * BOX_FILL_ALPHA
        got = shot[int(round(shown.at(x, y)[1])), int(round(shown.at(x, y)[0]))].astype(float)
        low, high = expected.min(axis=0) - 8, expected.max(axis=0) + 8
        assert ((got >= low) & (got <= high)).all(), (
            f"preview overlay at image pixel {x},{y} (object {i}): screen {got.tolist()}, expected within "
            f"{low.round().tolist()}..{high.round().tolist()}")
    assert -1 in checked and len(checked) > 1, f"too few pixels clear of edges and markers to check: {checked}"


@pytest.mark.parametrize("model_name", [A.TRAINED_SAM, A.TRAINED_FASTSAM])
def test_preview_follows_clicks_and_boxes_and_matches_the_queued_run(page, model_name, artifacts_dir):
    server = page.comfy_server
    scene = A.scene()
    node = build_graph(page, A.SCENE_IMAGE)
    widgets = {"size": FASTSAM_SETTINGS["imgsz"], "confidence": FASTSAM_SETTINGS["conf"]} if "fastsam" in model_name else {}
    save = page.evaluate(ADD_MASK_SAVE, [node, model_name, widgets])
    wait_for_image(page, node, SCENE_SIZE)
    shown = ImageOnScreen(page, node, SCENE_SIZE)
    first, second, third = (interior_point(scene.masks[k]) for k in (CLICKED, EXCLUDED, BOXED))

    page.mouse.click(*shown.at(*first))
    wait_for_preview(page, node, "no preview after a click")
    answer = shown_answer(page, node)
    assert answer["objects"], "the trained model finds the clicked shape"
    assert masks_of(answer).any(axis=0)[first[1], first[0]], "the preview does not cover the clicked pixel"
    check_overlay(page, node, answer, scene.image, [first])

    x0, y0, x1, y1 = scene.boxes_xyxy[BOXED].tolist()
    drag(page, shown.at(x0 - 2, y0 - 2), shown.at(x1 + 2, y1 + 2))
    wait_for_preview(page, node, "the preview did not follow the box")
    answer = shown_answer(page, node)
    assert masks_of(answer).any(axis=0)[third[1], third[0]], "the preview does not cover the boxed shape"
    check_overlay(page, node, answer, scene.image, [first], json.loads(widget_values(page, node)["box_prompt"]))
    if artifacts_dir is not None:  # the README's picture (docs/images/live_preview.png)
        page.screenshot(path=str(artifacts_dir / f"live_preview_{page.frontend}_{model_name}.png"), clip=node_clip(page, node))

    page.mouse.click(*shown.at(*second), button="right")
    state = wait_for_preview(page, node, "the preview did not follow the negative click")
    assert json.loads(state["prompts"][2]) == [1, 0]
    answer = shown_answer(page, node)
    masks = masks_of(answer)
    check_overlay(page, node, answer, scene.image, [first, second], json.loads(widget_values(page, node)["box_prompt"]))

    # the run queued now gives exactly the masks on screen
    values = widget_values(page, node)
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert {k: prompt[node]["inputs"][k] for k in PROMPT_WIDGETS} == values
    assert answer["request"]["model"]["model_name"] == prompt[prompt[node]["inputs"]["model"][0]]["inputs"]["model_name"]
    entry = server.run_ok(prompt)
    saved = np.stack([A.mask_of(server.view_image(ref)) for ref in output_images(entry, save)])
    assert saved.shape == masks.shape, f"the node made {len(saved)} objects, the preview showed {len(masks)}"
    assert np.array_equal(saved, masks), "the node's object_masks differ from the preview's"

    # another image: the old masks go at once (before any answer), the next preview is for the new image
    cleared = page.evaluate(
        f"""([id, name]) => {{ const load = app.graph.nodes.find((n) => n.type === "LoadImage");
              const w = load.widgets.find((w) => w.name === "image"); w.value = name; w.callback?.(w.value);
              const p = {PREVIEW_OF}; p.editor.sync(); return p.layer === null && p.last === null; }}""",
        [node, A.EDITOR_IMAGE])
    assert cleared, "the preview of the old image is still drawn after the image changed"
    page.wait_for_function(
        f"""(id) => {{ const s = JSON.parse({PREVIEW_OF}.editor.root.dataset.preview || "null");
                       return !!s && s.state !== "pending" && (s.image?.filename === "{A.EDITOR_IMAGE}" || s.state === "error"); }}""",
        arg=node, timeout=120_000)
    last = page.evaluate(f"(id) => {PREVIEW_OF}.last?.request?.image?.filename ?? null", node)
    assert last in (None, A.EDITOR_IMAGE)
    assert_clean_console(page)


def test_a_refused_model_reads_as_a_message_in_the_editor(page):
    node = build_graph(page, A.SCENE_IMAGE)
    page.evaluate(ADD_MASK_SAVE, [node, "not_there.pth", {}])
    wait_for_image(page, node, SCENE_SIZE)
    page.mouse.click(*ImageOnScreen(page, node, SCENE_SIZE).at(100, 100))
    page.wait_for_function(f"(id) => JSON.parse({PREVIEW_OF}.editor.root.dataset.preview || 'null')?.state === 'error'",
                           arg=node, timeout=30_000)
    line = page.evaluate(f"(id) => {PREVIEW_OF}.line.textContent", node)
    assert "'not_there.pth' is not in Load SAM Model's list" in line, line
    assert page.evaluate(f"(id) => {PREVIEW_OF}.layer", node) is None
    assert_clean_console(page)


@pytest.fixture(scope="session")
def mobile_sam_checkpoint(comfyui_checkout):
    """MobileSAM's real architecture (TinyViT encoder, 1024 px), random weights with the decoder's output
    opened up as comfy_assets does for its small SAM, so that clicks give masks to draw."""
    import torch

    from testsupport.checkpoints import build_vit_t_sam

    sam = build_vit_t_sam(seed=2)
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(40.0)
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(1.0)
    return sam.state_dict()


def test_click_to_overlay_latency_mobile_sam_1024(page, mobile_sam_checkpoint, artifacts_dir):
    import torch

    sams = page.comfy_server.base_dir / "models" / "sams"
    if not (sams / MOBILE_SAM).is_file():
        torch.save(mobile_sam_checkpoint, sams / MOBILE_SAM)
    node = build_graph(page, A.BIG_IMAGE)
    page.evaluate(ADD_MASK_SAVE, [node, MOBILE_SAM, {}])
    wait_for_image(page, node, (1024, 1024))
    shown = ImageOnScreen(page, node, (1024, 1024))
    clicks = [(300 + 61 * i, 200 + 83 * i) for i in range(8)]
    page.mouse.click(*shown.at(*clicks[0]))
    cold = wait_for_preview(page, node, "no preview after the first click (model load and encoder)")
    warm = []
    for at in clicks[1:]:
        page.mouse.click(*shown.at(*at))
        state = wait_for_preview(page, node, "no preview after a click on the encoded image")
        assert state["latencyMs"] is not None and "image encoded" not in state["message"], state
        warm.append(state)
    latencies = [s["latencyMs"] for s in warm]
    print(f"\n[{page.frontend}] MobileSAM architecture, 1024x1024, embedding cached: click -> overlay drawn "
          f"median {statistics.median(latencies)} ms (each: {latencies}; server part: {[s['serverMs'] for s in warm]} ms, of which {[s['server'] for s in warm]}); "
          f"first click (model load + encoder): {cold['latencyMs']} ms")
    settle(page)
    assert_clean_console(page)
