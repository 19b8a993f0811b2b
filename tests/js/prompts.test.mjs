// The Tiny SAM editor's pure helpers (web/js/prompts.js) against the shared test vectors
// (tests/vectors/prompts.json), which tests/test_prompt_vectors.py checks samkit/prompts.py
// against, and against the real node definitions: the editor's "no prompt" texts come from them,
// as in the browser. Run through pytest (tests/test_prompt_vectors.py), which writes the node
// definitions the way ComfyUI's /object_info sends them and names the file in SAMKIT_NODE_DEFS.
// Needs only Node (node:test, no npm packages).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

// web/js has no package.json (ComfyUI serves the folder as is), so Node before 20.19 would load
// prompts.js as CommonJS; imported from a data: URL it is an ES module on every Node version.
const source = readFileSync(new URL("../../web/js/prompts.js", import.meta.url), "utf8");
const P = await import(`data:text/javascript;base64,${Buffer.from(source).toString("base64")}`);

const vectors = JSON.parse(readFileSync(new URL("../vectors/prompts.json", import.meta.url), "utf8"));
const defsPath = process.env.SAMKIT_NODE_DEFS;
if (!defsPath)
  throw new Error("SAMKIT_NODE_DEFS is not set: run `python -m pytest tests/test_prompt_vectors.py`, which writes the node definitions and runs this file");
const nodeDefs = JSON.parse(readFileSync(defsPath, "utf8"));
const TINY_SAM_NODES = ["SamKitTinySAM", "SamKitFalTinySAM"];
const config = P.promptConfig(nodeDefs.SamKitTinySAM);

const defaultText = (name) => nodeDefs.SamKitTinySAM.input.required[name][1].default;
const asVectorResult = ({ points, boxes }) => ({
  points: points.map((p) => [p.x, p.y, p.label]),
  boxes: boxes.map((b) => [b.x, b.y, b.w, b.h]),
});
const fromVectorResult = ({ points, boxes }) => ({
  points: points.map(([x, y, label]) => ({ x, y, label })),
  boxes: boxes.map(([x, y, w, h]) => ({ x, y, w, h })),
});

test("both Tiny SAM nodes give the editor the same 'no prompt' texts, and the editor reads them as no prompt", () => {
  for (const name of TINY_SAM_NODES) assert.deepEqual(P.promptConfig(nodeDefs[name]), config, name);
  const texts = P.PROMPT_WIDGETS.map(defaultText);
  assert.deepEqual(P.parsePrompts(...texts, config), { points: [], boxes: [] });
  assert.deepEqual(P.formatPrompts({ points: [], boxes: [] }, config),
    Object.fromEntries(P.PROMPT_WIDGETS.map((name) => [name, defaultText(name)])));
});

test("a node definition whose prompt default is not a one-entry list gets no config (the editor stays off)", () => {
  const broken = (name, value) => {
    const def = structuredClone(nodeDefs.SamKitTinySAM);
    if (value === undefined) delete def.input.required[name];
    else def.input.required[name][1].default = value;
    return def;
  };
  assert.throws(() => P.promptConfig(broken("box_prompt", undefined)), /the default of box_prompt/);
  assert.throws(() => P.promptConfig(broken("point_prompt", "[[0,0],[0,0]]")), /the default of point_prompt/);
  assert.throws(() => P.promptConfig(broken("point_label", "[2]")), /the default of point_label/);
  assert.throws(() => P.promptConfig(broken("box_prompt", "[[0,0,0]]")), /the default of box_prompt/);
});

for (const v of vectors.parse) {
  const expected = v.both ?? v.js;
  test(`parse: ${v.name}`, () => {
    const read = () => P.parsePrompts(v.box_prompt, v.point_prompt, v.point_label, config);
    if (expected.error) {
      // the message names the widget first, like samkit/prompts.py's
      assert.throws(read, (err) => err instanceof Error && err.message.startsWith(expected.error), `expected an error naming ${expected.error}`);
    } else {
      assert.deepEqual(asVectorResult(read()), expected);
    }
  });
}

for (const v of vectors.format) {
  test(`format: ${v.name}`, () => {
    const prompts = fromVectorResult(v.prompts);
    const texts = v.texts === "no_prompt" ? Object.fromEntries(P.PROMPT_WIDGETS.map((n) => [n, "no_prompt"])) : v.texts;
    const wanted = Object.fromEntries(P.PROMPT_WIDGETS.map((n) => [n, texts[n] === "no_prompt" ? defaultText(n) : texts[n]]));
    const written = P.formatPrompts(prompts, config);
    assert.deepEqual(written, wanted);
    assert.deepEqual(P.parsePrompts(written.box_prompt, written.point_prompt, written.point_label, config), prompts);
  });
}

test("a click never lands on the 'no point' entry, even on the corner pixel", () => {
  const fit = P.fitImage(64, 48, 128, 96); // scale 2, no margin
  const [nx, ny] = config.point_prompt.item;
  const corner = P.pixelAt(fit, 64, 48, nx * 2 + 1, ny * 2 + 1, config);
  assert.notDeepEqual([corner.x, corner.y], [nx, ny]);
  assert.equal(corner.y, ny);
  assert.equal(Math.abs(corner.x - nx), 1);
  const texts = P.formatPrompts({ points: [{ ...corner, label: 1 }], boxes: [] }, config);
  assert.deepEqual(P.parsePrompts(texts.box_prompt, texts.point_prompt, texts.point_label, config).points, [{ ...corner, label: 1 }]);
  assert.deepEqual(P.pixelAt(fit, 64, 48, 21, 31, config), { x: 10, y: 15 }); // any other pixel is itself
});
