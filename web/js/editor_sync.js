// SAM Kit: what keeps the Tiny SAM editors in step with the graph, under every renderer.
//
// The classic LiteGraph canvas calls a DOM widget's onDraw on every frame, but Nodes 2.0 (Vue
// nodes, frontend 1.27.1+) never does, and nothing tells the Tiny SAM node when its upstream Load
// Image gets another file or when a widget value is set from code. So one module-level timer
// re-syncs every editor on screen a few times a second (a cheap key comparison when nothing
// changed), and repairs what Nodes 2.0 leaves behind after undo (see adoptStaleElement).
//
// ComfyUI imports every .js file of the pack's web folder as an extension; this one only exports.

import { api } from "../../../scripts/api.js";
import { app } from "../../../scripts/app.js";
import { viewQuery } from "./prompts.js";

const POLL_MS = 250;
const editors = new Set(); // every editor not yet known to be gone: {node, root, sync(), detached()}
let timer = null;

/** A node that undo, a workflow load or a delete has taken out of its graph (its editor must do nothing). */
export function isDetached(node) {
  const graph = node?.graph;
  if (!graph) return true;
  // undo and workflow loads rebuild the graph with the same ids: the id then names another node
  return typeof graph.getNodeById === "function" && graph.getNodeById(node.id) !== node;
}

/** Names among `names` whose input slot has a link (node.isInputConnected: 1.27 and 1.58 alike, no deprecated input.link). */
export function linkedInputs(node, names) {
  const inputs = node.inputs ?? [];
  return names.filter((name) => {
    const slot = inputs.findIndex((input) => input.name === name);
    return slot >= 0 && node.isInputConnected(slot);
  });
}

/** The node feeding `image`, looking through legacy Reroute nodes. */
function imageSourceNode(node) {
  const slot = node.inputs?.findIndex((input) => input.name === "image") ?? -1;
  let source = slot >= 0 && node.graph && node.isInputConnected(slot) ? node.getInputNode(slot) : null;
  for (let hops = 0; source && source.type === "Reroute" && hops < 32; hops++) source = source.getInputNode(0);
  return source;
}

/** URL of the image the node will receive: the chosen file of a Load Image–style node, else its preview. */
export function imageUrlFor(node) {
  const source = imageSourceNode(node);
  if (!source) return null;
  const file = source.widgets?.find((w) => w.name === "image" && w.type === "combo");
  if (typeof file?.value === "string" && file.value) return api.apiURL(`/view?${viewQuery(file.value)}`);
  const preview = source.imgs?.[source.imageIndex ?? 0];
  return preview?.src || null;
}

/** Make the edit just written one undo step (the frontend's own listeners would only see the next mouseup). */
export function recordUndoStep() {
  const tracker = app.extensionManager?.workflow?.activeWorkflow?.changeTracker;
  // 1.58 renamed checkState (now deprecated, with a warning) to captureCanvasState
  const capture = tracker?.captureCanvasState ?? tracker?.checkState;
  try {
    capture?.call(tracker);
  } catch (err) {
    console.warn("[SAM Kit] could not record the prompt edit for undo:", err);
  }
}

/**
 * Nodes 2.0 in frontend 1.58 rebuilds nodes on undo with the same ids and reuses each node's Vue
 * component, which keeps showing the removed node's DOM widget element (its WidgetDOM mounts an
 * element only once). Put the live editor where the removed one with the same id still sits.
 */
function adoptStaleElement(editor) {
  const id = String(editor.node.id);
  for (const other of editors) {
    if (other !== editor && other.root.isConnected && other.detached() && String(other.node.id) === id) {
      other.root.replaceWith(editor.root);
      editors.delete(other);
      return;
    }
  }
}

function tick() {
  if (document.hidden) return;
  for (const editor of editors) {
    if (editor.detached()) {
      if (!editor.root.isConnected) editors.delete(editor);
      continue;
    }
    if (!editor.root.isConnected) adoptStaleElement(editor);
    if (!editor.root.isConnected) continue;
    try {
      editor.sync();
    } catch (err) {
      console.error("[SAM Kit] editor sync failed:", err);
    }
  }
  if (!editors.size) {
    clearInterval(timer);
    timer = null;
  }
}

/** Keep `editor` in step from now on, until its node is gone and its element is off the page. */
export function watch(editor) {
  editors.add(editor);
  timer ??= setInterval(tick, POLL_MS);
}
