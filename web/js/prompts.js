// SAM Kit: the Tiny SAM editor's pure helpers (no ComfyUI imports, no DOM), so they can be
// tested on their own (tests/js/, run by tests/test_prompt_vectors.py). The widget formats are
// fal tiny-sam's, read by samkit/prompts.py: point_prompt "[[x, y], ...]", point_label
// "[1, 0, ...]", box_prompt "[[x, y, w, h], ...]", in pixels of the input image. Each widget's
// default (fal's, defined once in samkit/tiny_sam_params.py) means "no prompt"; this file holds
// no copy of them: promptConfig() reads them from the node definition ComfyUI sends the page.
//
// ComfyUI imports every .js file of the pack's web folder as an extension; this one only exports.

export const PROMPT_WIDGETS = ["box_prompt", "point_prompt", "point_label"];

const isNumber = (v) => typeof v === "number" && Number.isFinite(v);
const isTuple = (v, n) => Array.isArray(v) && v.length === n && v.every(isNumber);
const isLabel = (v) => v === 0 || v === 1;
const NO_PROMPT_SHAPES = { box_prompt: (v) => isTuple(v, 4), point_prompt: (v) => isTuple(v, 2), point_label: isLabel };

/**
 * A Tiny SAM node definition (ComfyUI's nodeData: input.required.<widget> = [type, {default}])
 * → {<widget>: {text, item}} for the three prompt widgets: each default's text, which the editor
 * writes when there is no prompt, and its one entry, which means "none" when read (a point or box
 * equal to it is skipped). Throws an Error naming the widget when a default is not a one-entry list.
 */
export function promptConfig(nodeData) {
  const config = {};
  for (const name of PROMPT_WIDGETS) {
    const text = nodeData?.input?.required?.[name]?.[1]?.default;
    let value;
    try {
      value = JSON.parse(text);
    } catch {
      value = undefined;
    }
    if (!Array.isArray(value) || value.length !== 1 || !NO_PROMPT_SHAPES[name](value[0]))
      throw new Error(`${nodeData?.name}: the default of ${name} (${JSON.stringify(text)}) is not a one-entry "no prompt" list`);
    config[name] = Object.freeze({ text, item: value[0] });
  }
  return Object.freeze(config);
}

function parseJson(text, name) {
  const raw = String(text ?? "").trim();
  if (!raw) return [];
  try {
    return JSON.parse(raw);
  } catch {
    throw new Error(`${name} is not valid JSON`);
  }
}

const sameEntry = (entry, item) => entry.length === item.length && entry.every((v, k) => v === item[k]);

/**
 * Widget texts → {points: [{x, y, label}], boxes: [{x, y, w, h}]}, as samkit/prompts.py reads
 * them: points and boxes equal to config's "none" entries are dropped (points with their labels).
 * Throws an Error naming the widget when the text is not one flat list the editor can show
 * (invalid JSON, per-image lists, label count mismatch, a box without area): the editor then
 * leaves it alone. Bounds against the image are not checked here (the image may not be loaded).
 */
export function parsePrompts(boxText, pointText, labelText, config) {
  const pointList = parseJson(pointText, "point_prompt");
  const labelList = parseJson(labelText, "point_label");
  const boxList = parseJson(boxText, "box_prompt");
  if (!Array.isArray(pointList) || !pointList.every((p) => isTuple(p, 2)))
    throw new Error("point_prompt is not one list of [x, y] points (per-image lists are edited as text)");
  if (!Array.isArray(labelList) || !labelList.every(isLabel))
    throw new Error("point_label is not one list of 1/0 labels");
  if (labelList.length !== pointList.length)
    throw new Error(`point_label has ${labelList.length} labels for ${pointList.length} points`);
  if (!Array.isArray(boxList) || !boxList.every((b) => isTuple(b, 4)))
    throw new Error("box_prompt is not one list of [x, y, w, h] boxes (per-image lists are edited as text)");
  const points = [];
  pointList.forEach(([x, y], i) => {
    if (!sameEntry([x, y], config.point_prompt.item)) points.push({ x, y, label: labelList[i] });
  });
  const boxes = boxList.filter((b) => !sameEntry(b, config.box_prompt.item)).map(([x, y, w, h]) => ({ x, y, w, h }));
  // the corners as samkit/prompts.py computes them, so a float that swallows w or h fails in both
  const flat = boxes.find((b) => !(b.x + b.w > b.x && b.y + b.h > b.y));
  if (flat) throw new Error(`box_prompt has a box without area ([${flat.x}, ${flat.y}, ${flat.w}, ${flat.h}]); width and height must be positive`);
  return { points, boxes };
}

/** {points, boxes} → the three widget texts in fal's format (config's "no prompt" texts when empty). */
export function formatPrompts({ points, boxes }, config) {
  const list = (rows) => `[${rows.map((r) => `[${r.join(",")}]`).join(",")}]`;
  return {
    box_prompt: boxes.length ? list(boxes.map((b) => [b.x, b.y, b.w, b.h])) : config.box_prompt.text,
    point_prompt: points.length ? list(points.map((p) => [p.x, p.y])) : config.point_prompt.text,
    point_label: points.length ? `[${points.map((p) => p.label).join(",")}]` : config.point_label.text,
  };
}

/** Where an image of width×height sits when fitted ("contain") into a view of viewW×viewH. */
export function fitImage(width, height, viewW, viewH) {
  const scale = Math.min(viewW / width, viewH / height);
  return { scale, left: (viewW - width * scale) / 2, top: (viewH - height * scale) / 2 };
}

/**
 * View position → the image pixel under it, clamped to the image. The pixel that is config's
 * "no point" entry ([0,0], the corner) becomes its neighbour in x, since a point there is skipped.
 */
export function pixelAt(fit, width, height, vx, vy, config) {
  const x = Math.min(width - 1, Math.max(0, Math.floor((vx - fit.left) / fit.scale)));
  const y = Math.min(height - 1, Math.max(0, Math.floor((vy - fit.top) / fit.scale)));
  if (width > 1 && sameEntry([x, y], config.point_prompt.item)) return { x: x + 1 < width ? x + 1 : x - 1, y };
  return { x, y };
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
