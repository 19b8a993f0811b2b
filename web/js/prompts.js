// SAM Kit: the Tiny SAM editor's pure helpers (no ComfyUI imports, no DOM), so they can be
// tested on their own. The widget formats are fal tiny-sam's, read by samkit/prompts.py:
// point_prompt "[[x, y], ...]", point_label "[1, 0, ...]", box_prompt "[[x, y, w, h], ...]",
// in pixels of the input image; "[[0,0]]" / "[0]" / "[[0,0,0,0]]" mean "no prompt".
//
// ComfyUI imports every .js file of the pack's web folder as an extension; this one only exports.

export const PROMPT_WIDGETS = ["box_prompt", "point_prompt", "point_label"];
export const NO_POINT = "[[0,0]]"; // fal's "no prompt" sentinels
export const NO_LABEL = "[0]";
export const NO_BOX = "[[0,0,0,0]]";

function parseJson(text, name) {
  const raw = String(text ?? "").trim();
  if (!raw) return [];
  try {
    return JSON.parse(raw);
  } catch {
    throw new Error(`${name} is not valid JSON`);
  }
}

const isNumber = (v) => typeof v === "number" && Number.isFinite(v);
const isTuple = (v, n) => Array.isArray(v) && v.length === n && v.every(isNumber);

/**
 * Widget texts → {points: [{x, y, label}], boxes: [{x, y, w, h}]}; fal's all-zero sentinels are
 * dropped. Throws an Error naming the widget when the text is not one flat list the editor can
 * show (invalid JSON, per-image lists, label count mismatch): the editor then leaves it alone.
 */
export function parsePrompts(boxText, pointText, labelText) {
  const pointList = parseJson(pointText, "point_prompt");
  const labelList = parseJson(labelText, "point_label");
  const boxList = parseJson(boxText, "box_prompt");
  if (!Array.isArray(pointList) || !pointList.every((p) => isTuple(p, 2)))
    throw new Error("point_prompt is not one list of [x, y] points (per-image lists are edited as text)");
  if (!Array.isArray(labelList) || !labelList.every((l) => l === 0 || l === 1))
    throw new Error("point_label is not one list of 1/0 labels");
  if (labelList.length !== pointList.length)
    throw new Error(`point_label has ${labelList.length} labels for ${pointList.length} points`);
  if (!Array.isArray(boxList) || !boxList.every((b) => isTuple(b, 4)))
    throw new Error("box_prompt is not one list of [x, y, w, h] boxes (per-image lists are edited as text)");
  const points = [];
  pointList.forEach(([x, y], i) => {
    if (x !== 0 || y !== 0) points.push({ x, y, label: labelList[i] });
  });
  const boxes = boxList.filter((b) => b.some((v) => v !== 0)).map(([x, y, w, h]) => ({ x, y, w, h }));
  return { points, boxes };
}

/** {points, boxes} → the three widget texts in fal's format (sentinels when empty). */
export function formatPrompts({ points, boxes }) {
  const list = (rows) => `[${rows.map((r) => `[${r.join(",")}]`).join(",")}]`;
  return {
    box_prompt: boxes.length ? list(boxes.map((b) => [b.x, b.y, b.w, b.h])) : NO_BOX,
    point_prompt: points.length ? list(points.map((p) => [p.x, p.y])) : NO_POINT,
    point_label: points.length ? `[${points.map((p) => p.label).join(",")}]` : NO_LABEL,
  };
}

/** Where an image of width×height sits when fitted ("contain") into a view of viewW×viewH. */
export function fitImage(width, height, viewW, viewH) {
  const scale = Math.min(viewW / width, viewH / height);
  return { scale, left: (viewW - width * scale) / 2, top: (viewH - height * scale) / 2 };
}

/** View position → the image pixel under it, clamped to the image; (0,0) becomes (1,0) since [0,0] means "no point". */
export function pixelAt(fit, width, height, vx, vy) {
  const x = Math.min(width - 1, Math.max(0, Math.floor((vx - fit.left) / fit.scale)));
  const y = Math.min(height - 1, Math.max(0, Math.floor((vy - fit.top) / fit.scale)));
  return x === 0 && y === 0 && width > 1 ? { x: 1, y } : { x, y };
}

/** Two view positions → an [x, y, w, h] pixel box inside the image, at least 1×1. */
export function boxBetween(fit, width, height, a, b) {
  const toImage = (v, off, size) => Math.min(size, Math.max(0, (v - off) / fit.scale));
  const xs = [toImage(a.x, fit.left, width), toImage(b.x, fit.left, width)].sort((p, q) => p - q);
  const ys = [toImage(a.y, fit.top, height), toImage(b.y, fit.top, height)].sort((p, q) => p - q);
  const x = Math.min(width - 1, Math.round(xs[0]));
  const y = Math.min(height - 1, Math.round(ys[0]));
  return { x, y, w: Math.max(1, Math.round(xs[1]) - x), h: Math.max(1, Math.round(ys[1]) - y) };
}

/** A Load Image–style combo value ("sub/name.png [input]") → the query of the server's /view URL for that file. */
export function viewQuery(value) {
  let name = String(value).trim();
  let type = "input";
  const annotated = name.match(/^(.*) \[(input|output|temp)\]$/);
  if (annotated) [, name, type] = annotated;
  const cut = name.lastIndexOf("/");
  return new URLSearchParams({ filename: name.slice(cut + 1), type, subfolder: cut >= 0 ? name.slice(0, cut) : "" }).toString();
}
