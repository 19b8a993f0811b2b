// SAM Kit: the Tiny SAM editor's live mask preview.
//
// Each time the prompts, the upstream image or the model choice change, the editor posts what the
// node would run with to the pack's route (POST /samkit/preview, samkit/preview.py): the Load SAM
// Model node's widgets (found by following the node's `model` link), the image as ComfyUI's /view
// serves it (filename, subfolder, type) and the widgets' own texts. The answer is the node's
// objects for them (the same code, model and embedding cache), each a 1-bit PNG of its box with
// the node's colour; they are painted the way the node paints its combined image (opaque colours,
// smaller objects on top, blended once at the node's alpha). A newer change aborts the older
// request; a drag in progress is previewed after a short pause; errors show as a line of text.
//
// ComfyUI imports every .js file of the pack's web folder as an extension; this one only exports.

import { api } from "../../../scripts/api.js";
import { imageUrlFor, linkedInputs } from "./editor_sync.js";
import { PROMPT_WIDGETS, formatPrompts } from "./prompts.js";

const ROUTE = "/samkit/preview";
const LOADER = "SamKitModelLoader";
const DRAG_DEBOUNCE_MS = 120; // a box being dragged is previewed once the pointer rests this long
const RETRY_MS = 1000; // the server was busy (a workflow running): ask again this often
// what the node reads besides the three prompt widgets; a link on any of them means the preview cannot know it
const NODE_WIDGETS = ["size", "confidence", "iou"];
const LINK_ONLY = ["bboxes", "positive_coords", "negative_coords"];
const OFF = "samkit_preview"; // node property: false when the user switched the preview off (saved with the workflow)

/** The node feeding `name` (through legacy Reroutes), or null. */
function sourceOf(node, name) {
  const slot = node.inputs?.findIndex((input) => input.name === name) ?? -1;
  let source = slot >= 0 && node.graph && node.isInputConnected(slot) ? node.getInputNode(slot) : null;
  for (let hops = 0; source && source.type === "Reroute" && hops < 32; hops++) source = source.getInputNode(0);
  return source;
}

/** The Load SAM Model choice feeding the node's `model` input, or {error}. */
export function modelChoice(node) {
  const loader = sourceOf(node, "model");
  if (!loader) return { error: "connect Load SAM Model to 'model' to see a preview" };
  if ((loader.comfyClass ?? loader.type) !== LOADER) return { error: "preview needs Load SAM Model on 'model'" };
  const value = (name) => loader.widgets?.find((w) => w.name === name)?.value;
  return { model_name: value("model_name"), device: value("device") ?? "auto", precision: value("precision") ?? "auto" };
}

/** An image URL of ComfyUI's /view → {filename, subfolder, type}, or null for any other URL. */
export function viewRef(url) {
  if (!url) return null;
  const parsed = new URL(url, location.href);
  if (!parsed.pathname.endsWith("/view") || !parsed.searchParams.get("filename")) return null;
  const q = parsed.searchParams;
  return { filename: q.get("filename"), subfolder: q.get("subfolder") ?? "", type: q.get("type") ?? "output" };
}

async function decodeMask(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return createImageBitmap(new Blob([bytes], { type: "image/png" }));
}

/** The answer's objects as one width×height canvas: each object's colour, opaque, in paint order (later on top).
 * Each mask is a palette PNG in its colour with a transparent background, so it is drawn as it is. */
async function paintLayer(answer) {
  const { width, height, objects } = answer;
  const bitmaps = await Promise.all(objects.map((o) => decodeMask(o.png)));
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  for (const i of answer.paint_order) ctx.drawImage(bitmaps[i], objects[i].box[0], objects[i].box[1]);
  bitmaps.forEach((bitmap) => bitmap.close());
  return canvas;
}

export class MaskPreview {
  constructor(editor) {
    this.editor = editor;
    this.key = null; // the request last sent (or cleared for)
    this.controller = null; // AbortController of the request in flight
    this.timer = null; // pending debounced or retried request
    this.layer = null; // painted objects of the answer shown
    this.shownFor = null; // image URL the layer belongs to
    this.last = null; // the answer shown (tests compare its masks with the node's)
    this.inputAt = null; // event time of the click/drag that made the pending change
    this.state = { state: "off" };
    this.line = document.createElement("div");
    // a fixed height: the text comes and goes with every request, and the image above must not move
    Object.assign(this.line.style, { height: "15px", lineHeight: "15px", flex: "none", overflow: "hidden",
                                     textOverflow: "ellipsis", whiteSpace: "nowrap" });
    this.toggle = document.createElement("label");
    this.toggle.title = "Show the masks of the prompts over the image (the Tiny SAM node's own result, without a run)";
    Object.assign(this.toggle.style, { display: "flex", alignItems: "center", gap: "2px", cursor: "pointer" });
    this.checkbox = document.createElement("input");
    this.checkbox.type = "checkbox";
    this.checkbox.checked = true;
    this.checkbox.addEventListener("change", () => {
      const node = this.editor.node;
      node.properties ??= {};
      if (this.checkbox.checked) delete node.properties[OFF];
      else node.properties[OFF] = false;
      this.update();
    });
    this.toggle.append(this.checkbox, "Preview");
  }

  on() {
    return this.editor.node.properties?.[OFF] !== false;
  }

  /** The time (event.timeStamp) of the pointer action that is about to change the prompts. */
  markInput(time) {
    this.inputAt = time;
  }

  /** What the node would run with now (`box`: a box being dragged), or {error}/{empty}. */
  request(box) {
    const editor = this.editor;
    const node = editor.node;
    this.checkbox.checked = this.on(); // the property may come from a loaded workflow or undo
    if (!this.checkbox.checked) return { off: true };
    if (editor.error) return { error: "no preview while the prompt text cannot be shown" };
    const linked = linkedInputs(node, [...PROMPT_WIDGETS, ...NODE_WIDGETS, ...LINK_ONLY]);
    if (linked.length) return { error: `no preview: ${linked.join(", ")} linked` };
    const { points, boxes } = editor.prompts;
    const all = box ? [...boxes, box] : boxes;
    if (!points.length && !all.length) return { empty: true };
    const image = viewRef(editor.imageUrl);
    if (!image) return { error: "preview needs an image ComfyUI serves (Load Image)" };
    const model = modelChoice(node);
    if (model.error) return model;
    const widget = (name) => node.widgets?.find((w) => w.name === name)?.value;
    const texts = box ? formatPrompts({ points, boxes: all }, editor.config)
      : Object.fromEntries(PROMPT_WIDGETS.map((n) => [n, String(widget(n))]));
    return { node: `${api.clientId ?? api.initialClientId ?? ""}:${node.id}`, model, image,
             size: widget("size"), confidence: widget("confidence"), iou: widget("iou"), ...texts };
  }

  /** Bring the preview in step with the editor (cheap when nothing changed); `box`: a drag in progress. */
  update(box = null) {
    const inputAt = this.inputAt; // only the change the pointer action makes right away counts from it
    this.inputAt = null;
    const body = this.request(box);
    const key = JSON.stringify(body);
    if (key === this.key) return;
    this.key = key;
    clearTimeout(this.timer);
    this.controller?.abort();
    this.controller = null;
    if (this.shownFor !== this.editor.imageUrl) this.clear(); // another image: the old masks are wrong at once
    if (body.error || body.empty || body.off) {
      this.clear();
      this.show(body.error ? { state: "off", message: body.error } : { state: body.off ? "off" : "empty" });
      return;
    }
    const send = () => this.send(body, key, inputAt);
    if (box) this.timer = setTimeout(send, DRAG_DEBOUNCE_MS);
    else send();
  }

  async send(body, key, inputAt) {
    const controller = new AbortController();
    this.controller = controller;
    const current = () => this.controller === controller && this.key === key && !this.editor.detached();
    const sentAt = performance.now();
    this.show({ ...this.state, state: "pending" });
    let answer;
    let status = 0;
    try {
      const response = await api.fetchApi(ROUTE, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal: controller.signal,
      });
      status = response.status;
      answer = await response.json().catch(() => ({ error: `the server answered ${response.status} without JSON` }));
      if (!response.ok && !answer.error) answer = { error: `the server answered ${response.status}` };
    } catch (err) {
      if (err?.name === "AbortError") return;
      answer = { error: `preview request failed: ${err?.message ?? err}` };
    }
    if (!current() || answer.superseded) return;
    if (answer.error) {
      this.clear();
      this.show({ state: "error", message: answer.error, status });
      if (answer.retry) this.timer = setTimeout(() => { if (current()) { this.key = null; this.update(); } }, RETRY_MS);
      return;
    }
    const layer = await paintLayer(answer);
    if (!current()) return;
    this.layer = layer;
    this.shownFor = this.editor.imageUrl;
    this.last = { ...answer, request: body };
    this.editor.draw();
    const drawnAt = performance.now();
    const count = answer.objects.length;
    this.show({
      state: "shown", objects: count, image: body.image, prompts: PROMPT_WIDGETS.map((n) => body[n]),
      message: answer.note ?? `${count} object${count === 1 ? "" : "s"}${answer.encoded ? " · image encoded" : ""}`,
      latencyMs: inputAt != null ? Math.round(drawnAt - inputAt) : null, requestMs: Math.round(drawnAt - sentAt),
      serverMs: answer.ms?.total ?? null, server: answer.ms ?? null,
    });
  }

  /** Paint the shown objects over the image drawn at `fit` (the editor calls this right after drawing the image). */
  paint(ctx, fit) {
    if (!this.layer || this.shownFor !== this.editor.imageUrl || !this.last) return;
    ctx.save();
    ctx.globalAlpha = this.last.alpha;
    ctx.imageSmoothingEnabled = false; // mask edges land on the pixels the node's masks cover
    ctx.drawImage(this.layer, fit.left, fit.top, this.last.width * fit.scale, this.last.height * fit.scale);
    ctx.restore();
  }

  clear() {
    const had = !!this.layer;
    this.layer = null;
    this.last = null;
    this.shownFor = null;
    if (had) this.editor.draw();
  }

  show(state) {
    this.state = state;
    const text = state.message ? `Preview: ${state.state === "error" ? "⚠ " : ""}${state.message}` : "";
    this.line.textContent = state.state === "pending" && !text ? "Preview: …" : text;
    this.line.title = this.line.textContent;
    this.editor.root.dataset.preview = JSON.stringify(state);
  }

  dispose() {
    clearTimeout(this.timer);
    this.controller?.abort();
    this.controller = null;
  }
}
