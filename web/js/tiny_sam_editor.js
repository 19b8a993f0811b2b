// SAM Kit: a point and box editor on the Tiny SAM nodes (local and fal).
//
// The three STRING widgets (box_prompt, point_prompt, point_label) are the only state: the editor
// re-reads them whenever they may have changed (typing, code, workflow load, undo; see
// editor_sync.js) and always right before an edit, and writes them back after each edit, so
// saving, loading and queueing need nothing extra. Coordinates are pixels of the image that feeds
// the node's `image` input (read from the upstream Load Image file, or that node's preview), never
// of the on-screen canvas. Works on the classic canvas and on Nodes 2.0 (Vue nodes). On the local
// node the masks for the prompts show over the image as they change (mask_preview.js).

import { app } from "../../../scripts/app.js";
import { imageUrlFor, isDetached, linkedInputs, recordUndoStep, watch } from "./editor_sync.js";
import { MaskPreview } from "./mask_preview.js";
import { PROMPT_WIDGETS, boxBetween, fitImage, formatPrompts, parsePrompts, pixelAt, promptConfig } from "./prompts.js";

// the local node and its fal twin take the same three prompt widgets
const NODE_IDS = new Set(["SamKitTinySAM", "SamKitFalTinySAM"]);
const EDITOR_NAME = "prompt_editor";
const DRAG_THRESHOLD = 5; // CSS px a press must move before it is a box rather than a click
const HIT_RADIUS = 8; // CSS px around a point (or a box's ✕) that a click deletes
const MIN_HEIGHT = 160;
const HINT = "Click: + point · Right-click or Shift+click: − point · Drag: box · Click a point or a box's ✕ to remove it";
const configs = new Map(); // node type → promptConfig of its definition (its widgets' "no prompt" defaults)

class PromptEditor {
  constructor(node, config) {
    this.node = node;
    this.config = config;
    this.prompts = { points: [], boxes: [] };
    this.error = null; // set when the widgets hold something the editor must not overwrite
    this.widgetKey = null;
    this.imageUrl = null;
    this.image = null; // loaded HTMLImageElement for imageUrl
    this.imageError = null;
    this.press = null; // {x, y, button, shift, box} while a pointer is down
    this.viewKey = "";
    this.removed = false; // the node's onRemoved ran
    this.writing = false; // commit() is setting the widgets: their change hooks need not re-read them

    this.root = document.createElement("div");
    // the local node has a model to preview with; its fal twin has none
    this.preview = node.inputs?.some((input) => input.name === "model") ? new MaskPreview(this) : null;
    Object.assign(this.root.style, {
      display: "flex", flexDirection: "column", gap: "2px", boxSizing: "border-box",
      userSelect: "none", font: "11px sans-serif", color: "var(--input-text, #ddd)",
    });
    this.root.dataset.samkitEditor = "";
    const bar = document.createElement("div");
    Object.assign(bar.style, { display: "flex", alignItems: "center", gap: "6px", minHeight: "20px" });
    this.status = document.createElement("span");
    Object.assign(this.status.style, { flex: "1", overflow: "hidden", textOverflow: "ellipsis", whiteSpace: "nowrap" });
    this.clearButton = document.createElement("button");
    this.clearButton.textContent = "Clear";
    this.clearButton.title = "Remove every point and box";
    Object.assign(this.clearButton.style, { font: "inherit", padding: "1px 8px", cursor: "pointer" });
    this.clearButton.addEventListener("click", () => this.commit({ points: [], boxes: [] }));
    bar.append(this.status, ...(this.preview ? [this.preview.toggle] : []), this.clearButton);

    this.frame = document.createElement("div");
    Object.assign(this.frame.style, { flex: "1", minHeight: "0", position: "relative" });
    this.canvas = document.createElement("canvas");
    Object.assign(this.canvas.style, {
      position: "absolute", inset: "0", width: "100%", height: "100%", cursor: "crosshair",
      touchAction: "none", background: "rgba(0,0,0,0.25)", borderRadius: "4px",
    });
    this.canvas.title = HINT;
    this.frame.append(this.canvas);
    const hint = document.createElement("div");
    hint.textContent = HINT;
    Object.assign(hint.style, { opacity: "0.7", lineHeight: "1.3" });
    this.root.append(bar, this.frame, ...(this.preview ? [this.preview.line] : []), hint);

    this.canvas.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onPointerMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onPointerUp(e));
    this.canvas.addEventListener("pointercancel", () => { this.press = null; this.draw(); });
    this.canvas.addEventListener("contextmenu", (e) => { e.preventDefault(); e.stopPropagation(); });
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(this.frame);
  }

  widget(name) {
    return this.node.widgets?.find((w) => w.name === name);
  }

  /** The node is gone (deleted, or replaced by undo or a workflow load): this editor must write nothing. */
  detached() {
    return this.removed || isDetached(this.node);
  }

  /** Re-read the widgets and the image source; cheap when nothing changed (runs on every draw and poll). */
  sync() {
    if (this.writing || this.detached()) return;
    const texts = PROMPT_WIDGETS.map((n) => String(this.widget(n)?.value ?? ""));
    const key = texts.join("\n");
    let changed = false;
    if (key !== this.widgetKey) {
      this.widgetKey = key;
      try {
        this.prompts = parsePrompts(...texts, this.config);
        this.error = null;
      } catch (err) {
        this.error = err.message;
      }
      changed = true;
    }
    const url = imageUrlFor(this.node);
    if (url !== this.imageUrl) {
      this.imageUrl = url;
      this.image = null;
      this.imageError = null;
      if (url) {
        const img = new Image();
        img.onload = () => { if (this.imageUrl === url) { this.image = img; this.draw(); } };
        img.onerror = () => { if (this.imageUrl === url) { this.imageError = "could not load the input image"; this.draw(); } };
        img.src = url;
      }
      changed = true;
    }
    const view = this.viewSize();
    if (changed || `${view.w}x${view.h}` !== this.viewKey) this.draw();
    this.preview?.update(); // prompts, image or model choice changed: a new preview (a key compare otherwise)
  }

  viewSize() {
    return { w: this.frame.clientWidth, h: this.frame.clientHeight };
  }

  fit() {
    const view = this.viewSize();
    if (!this.image || view.w < 1 || view.h < 1) return null;
    return fitImage(this.image.naturalWidth, this.image.naturalHeight, view.w, view.h);
  }

  /** Pointer event → position in the canvas' own CSS pixels (the node may be zoomed by a CSS transform). */
  viewPos(e) {
    const rect = this.canvas.getBoundingClientRect();
    const view = this.viewSize();
    return { x: ((e.clientX - rect.left) * view.w) / rect.width, y: ((e.clientY - rect.top) * view.h) / rect.height };
  }

  toView(fit, x, y) {
    return { x: fit.left + x * fit.scale, y: fit.top + y * fit.scale };
  }

  insideImage(fit, p) {
    const { naturalWidth: w, naturalHeight: h } = this.image;
    return p.x >= fit.left && p.y >= fit.top && p.x < fit.left + w * fit.scale && p.y < fit.top + h * fit.scale;
  }

  /** The point or box ✕ under a view position, as {kind, index}. */
  hitTest(fit, p) {
    const near = (q) => Math.hypot(q.x - p.x, q.y - p.y) <= HIT_RADIUS;
    // centre of a point's pixel, as drawn
    const pointIndex = this.prompts.points.findLastIndex((pt) => near(this.toView(fit, pt.x + 0.5, pt.y + 0.5)));
    if (pointIndex >= 0) return { kind: "points", index: pointIndex };
    const boxIndex = this.prompts.boxes.findLastIndex((b) => near(this.closeHandle(fit, b)));
    if (boxIndex >= 0) return { kind: "boxes", index: boxIndex };
    return null;
  }

  closeHandle(fit, box) {
    const corner = this.toView(fit, box.x + box.w, box.y);
    return { x: corner.x - 7, y: corner.y + 7 };
  }

  onPointerDown(e) {
    if ((e.button !== 0 && e.button !== 2) || this.detached()) return;
    this.sync(); // every edit starts from the widgets as they are now, whatever the renderer drew
    if (this.error || !this.fit()) return;
    this.canvas.setPointerCapture(e.pointerId);
    this.press = { ...this.viewPos(e), button: e.button, shift: e.shiftKey, box: null };
  }

  onPointerMove(e) {
    const press = this.press;
    const fit = this.fit();
    if (!press || !fit || press.button !== 0) return;
    const p = this.viewPos(e);
    if (!press.box && Math.hypot(p.x - press.x, p.y - press.y) < DRAG_THRESHOLD) return;
    if (!this.insideImage(fit, press)) return; // a box starts on the image
    press.box = boxBetween(fit, this.image.naturalWidth, this.image.naturalHeight, press, p);
    this.draw();
    this.preview?.update(press.box); // debounced while the pointer moves
  }

  onPointerUp(e) {
    const press = this.press;
    this.press = null;
    const fit = this.fit();
    if (!press || !fit || this.detached()) return;
    this.preview?.markInput(e.timeStamp); // click-to-overlay latency counts from here
    const { points, boxes } = this.prompts;
    if (press.box) {
      this.commit({ points, boxes: [...boxes, press.box] });
      return;
    }
    const p = this.viewPos(e);
    const hit = this.hitTest(fit, press);
    if (hit) {
      const next = { points: [...points], boxes: [...boxes] };
      next[hit.kind].splice(hit.index, 1);
      this.commit(next);
    } else if (this.insideImage(fit, p)) {
      const pixel = pixelAt(fit, this.image.naturalWidth, this.image.naturalHeight, p.x, p.y, this.config);
      const label = press.button === 2 || press.shift || e.shiftKey ? 0 : 1;
      this.commit({ points: [...points, { ...pixel, label }], boxes });
    } else {
      this.draw();
    }
  }

  /** Write prompts to the widgets (the source of truth), as LiteGraph's own widget edits do, and show them. */
  commit(prompts) {
    if (this.detached()) return;
    const texts = formatPrompts(prompts, this.config);
    let changed = false;
    this.writing = true;
    try {
      for (const [name, text] of Object.entries(texts)) {
        const w = this.widget(name);
        if (!w || w.value === text) continue;
        const old = w.value;
        w.value = text;
        w.callback?.(text, app.canvas, this.node);
        this.node.onWidgetChanged?.(name, text, old, w); // 1.58 clears the widget's queue errors here
        changed = true;
      }
    } finally {
      this.writing = false;
    }
    this.node.setDirtyCanvas?.(true, true);
    this.sync();
    this.draw();
    if (changed) recordUndoStep();
  }

  draw() {
    const view = this.viewSize();
    this.viewKey = `${view.w}x${view.h}`;
    const ratio = window.devicePixelRatio || 1;
    const cw = Math.max(1, Math.round(view.w * ratio));
    const ch = Math.max(1, Math.round(view.h * ratio));
    if (this.canvas.width !== cw || this.canvas.height !== ch) {
      this.canvas.width = cw;
      this.canvas.height = ch;
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, view.w, view.h);
    this.updateStatus();
    const fit = this.fit();
    if (!fit) {
      ctx.fillStyle = "#aaa";
      ctx.font = "12px sans-serif";
      ctx.textAlign = "center";
      const message = this.imageError ?? (this.imageUrl ? "loading image…" : "Connect a Load Image node to 'image' to place prompts here");
      ctx.fillText(message, view.w / 2, view.h / 2, Math.max(10, view.w - 16));
      return;
    }
    const { naturalWidth: w, naturalHeight: h } = this.image;
    ctx.imageSmoothingEnabled = fit.scale < 1;
    ctx.drawImage(this.image, fit.left, fit.top, w * fit.scale, h * fit.scale);
    this.preview?.paint(ctx, fit);
    const boxes = this.press?.box ? [...this.prompts.boxes, this.press.box] : this.prompts.boxes;
    boxes.forEach((b, i) => {
      const a = this.toView(fit, b.x, b.y);
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#3fa9ff";
      ctx.fillStyle = "rgba(63,169,255,0.15)";
      ctx.fillRect(a.x, a.y, b.w * fit.scale, b.h * fit.scale);
      ctx.strokeRect(a.x, a.y, b.w * fit.scale, b.h * fit.scale);
      if (i < this.prompts.boxes.length) {
        const c = this.closeHandle(fit, b);
        ctx.fillStyle = "#3fa9ff";
        ctx.fillRect(c.x - 6, c.y - 6, 12, 12);
        ctx.strokeStyle = "#fff";
        ctx.lineWidth = 1.5;
        ctx.beginPath();
        ctx.moveTo(c.x - 3, c.y - 3); ctx.lineTo(c.x + 3, c.y + 3);
        ctx.moveTo(c.x + 3, c.y - 3); ctx.lineTo(c.x - 3, c.y + 3);
        ctx.stroke();
      }
    });
    for (const pt of this.prompts.points) {
      const c = this.toView(fit, pt.x + 0.5, pt.y + 0.5);
      ctx.beginPath();
      ctx.arc(c.x, c.y, 6, 0, 2 * Math.PI);
      ctx.fillStyle = pt.label === 1 ? "#2ecc40" : "#ff4136";
      ctx.fill();
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
      ctx.beginPath(); // + or − inside the dot
      ctx.moveTo(c.x - 3, c.y); ctx.lineTo(c.x + 3, c.y);
      if (pt.label === 1) { ctx.moveTo(c.x, c.y - 3); ctx.lineTo(c.x, c.y + 3); }
      ctx.stroke();
    }
  }

  updateStatus() {
    const { points, boxes } = this.prompts;
    const positive = points.filter((p) => p.label === 1).length;
    const linked = linkedInputs(this.node, PROMPT_WIDGETS);
    let text;
    if (this.error) text = `⚠ ${this.error}: edit the text, or Clear`;
    else {
      const size = this.image ? `${this.image.naturalWidth}×${this.image.naturalHeight} · ` : "";
      text = `${size}${positive} + / ${points.length - positive} − points · ${boxes.length} box${boxes.length === 1 ? "" : "es"}`;
      if (linked.length) text += ` · ${linked.join(", ")} linked: the link wins`;
    }
    this.status.textContent = text;
    this.status.title = text;
    this.root.dataset.state = JSON.stringify({ ...this.prompts, error: this.error });
  }

  remove() {
    this.removed = true;
    this.resizeObserver.disconnect();
    this.preview?.dispose();
  }
}

function chain(object, method, after) {
  const original = object[method];
  object[method] = function (...args) {
    const result = original?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

app.registerExtension({
  name: "comfyui-sam-kit.TinySamPromptEditor",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_IDS.has(nodeData?.name)) return;
    try {
      configs.set(nodeData.name, promptConfig(nodeData));
    } catch (err) {
      configs.delete(nodeData.name);
      console.error("[SAM Kit] no prompt editor on this node type:", err); // its text widgets still work
      return;
    }
    // after a workflow load the widgets hold the saved prompts: show them straight away
    chain(nodeType.prototype, "onConfigure", function () { this.samkitEditor?.sync(); });
    // typed text (classic prompt dialog, Nodes 2.0 inputs) and other widget edits go through here
    const prompts = new Set(PROMPT_WIDGETS);
    chain(nodeType.prototype, "onWidgetChanged", function (name) {
      if (prompts.has(name)) this.samkitEditor?.sync();
    });
  },

  async nodeCreated(node) {
    const config = configs.get(node.comfyClass);
    if (!config || node.samkitEditor) return;
    const editor = new PromptEditor(node, config);
    node.samkitEditor = editor;
    const widget = node.addDOMWidget(EDITOR_NAME, "samkit_prompt_editor", editor.root, {
      serialize: false, // the STRING widgets carry the prompts; this one adds nothing to the workflow or prompt
      getValue: () => "",
      setValue: () => {},
      getMinHeight: () => MIN_HEIGHT,
      onDraw: () => editor.sync(),
    });
    widget.serialize = false;
    chain(node, "onRemoved", () => editor.remove());
    chain(node, "onConnectionsChange", () => requestAnimationFrame(() => editor.sync()));
    const [width, height] = node.size;
    node.setSize([Math.max(width, 360), Math.max(height, node.computeSize()[1] + 140)]);
    requestAnimationFrame(() => editor.sync());
    watch(editor); // Nodes 2.0 never calls onDraw; nothing reports an upstream image change
  },
});
