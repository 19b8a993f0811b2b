"""What the three Tiny SAM prompt widgets mean, checked on both readers with one set of vectors.

``tests/vectors/prompts.json`` lists widget texts and what they mean. Here ``samkit/prompts.py``
reads each at the file's image size; ``tests/js/prompts.test.mjs`` (run below under Node) makes
the browser editor's ``web/js/prompts.js`` read the same texts, with its "no prompt" texts taken
from the node definitions written here the way ComfyUI's /object_info sends them. Where the two
may differ the file says why, and :func:`test_the_readers_differ_only_where_the_editor_is_safe`
holds it to the two safe kinds: the editor refuses text (it then leaves the text alone), or
Python applies the image (points outside it fail, boxes are clipped to it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from comfyui_sam_kit.nodes.fal_remote import SamKitFalTinySAM
from comfyui_sam_kit.nodes.tiny_sam import SamKitTinySAM
from comfyui_sam_kit.samkit.prompts import PromptError, parse_prompts
from comfyui_sam_kit.samkit.tiny_sam_params import NO_PROMPTS

TESTS = Path(__file__).resolve().parent
VECTORS = json.loads((TESTS / "vectors" / "prompts.json").read_text(encoding="utf-8"))
WIDTH, HEIGHT = VECTORS["image"]
PARSE = {v["name"]: v for v in VECTORS["parse"]}
FORMAT = {v["name"]: v for v in VECTORS["format"]}


def python_reads(box_prompt, point_prompt, point_label, width=WIDTH, height=HEIGHT) -> dict:
    """samkit/prompts.py's reading of the widget texts, in the vectors' terms."""
    try:
        (image,) = parse_prompts(1, width, height, point_prompt=point_prompt, point_label=point_label,
                                 box_prompt=box_prompt)
    except PromptError as exc:
        return {"error": str(exc)}
    return {"points": [[x, y, label] for (x, y), label in zip(image.points, image.labels)],
            "boxes": [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in image.boxes]}


def assert_reads_as(got: dict, expected: dict) -> None:
    if "error" in expected:
        assert "error" in got, f"expected an error naming {expected['error']}, got {got}"
        assert got["error"].startswith(expected["error"]), got["error"]
    else:
        assert "error" not in got, got["error"] if "error" in got else None
        # exact: every vector's numbers are binary fractions, so x1 - x0 gives back w exactly
        assert got == expected


@pytest.mark.parametrize("name", PARSE)
def test_python_reads_each_vector_as_written(name):
    v = PARSE[name]
    assert_reads_as(python_reads(v["box_prompt"], v["point_prompt"], v["point_label"]), v.get("both", v.get("python")))


def on_the_image(meaning: dict, width: int, height: int) -> dict:
    """A prompt's meaning as Python applies it to a width×height image: the rule in prompts.py's
    docstring (points must lie on the image; boxes are clipped to it and must overlap it)."""
    for x, y, _ in meaning["points"]:
        if not (0 <= x < width and 0 <= y < height):
            return {"error": "point_prompt"}
    boxes = []
    for x, y, w, h in meaning["boxes"]:
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            return {"error": "box_prompt"}
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        boxes.append([x0, y0, x1 - x0, y1 - y0])
    return {"points": meaning["points"], "boxes": boxes}


@pytest.mark.parametrize("name", PARSE)
def test_the_readers_differ_only_where_the_editor_is_safe(name):
    v = PARSE[name]
    if "both" in v:
        assert "python" not in v and "js" not in v
        if "error" not in v["both"]:
            assert on_the_image(v["both"], WIDTH, HEIGHT) == v["both"], "a 'both' vector must lie on the image"
        return
    assert v.get("why"), "a vector where the readers differ says why"
    if "error" in v["js"]:
        return  # the editor shows an error and never rewrites the text: Python's reading stands
    assert "error" not in v["python"] or v["python"]["error"] in ("point_prompt", "box_prompt")
    assert v["python"] == on_the_image(v["js"], WIDTH, HEIGHT), "only the image may make Python differ"


@pytest.mark.parametrize("name", FORMAT)
def test_python_reads_what_the_editor_writes(name):
    v = FORMAT[name]
    texts = v["texts"] if isinstance(v["texts"], dict) else dict.fromkeys(NO_PROMPTS, v["texts"])
    texts = {k: NO_PROMPTS[k].text if t == "no_prompt" else t for k, t in texts.items()}
    assert_reads_as(python_reads(**texts), v["prompts"])


def node_definitions() -> dict:
    """The Tiny SAM nodes' definitions as ComfyUI's /object_info sends them to the page (JSON)."""
    defs = {}
    for name, cls in (("SamKitTinySAM", SamKitTinySAM), ("SamKitFalTinySAM", SamKitFalTinySAM)):
        defs[name] = json.loads(json.dumps({"name": name, "input": cls.INPUT_TYPES()}))
    return defs


def node_version(node: str) -> tuple:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    return tuple(int(p) for p in re.findall(r"\d+", out)[:3])


def test_the_editor_reads_the_vectors_and_the_node_definitions(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # the fal node lists endpoints from
    monkeypatch.setenv("APPDATA", str(tmp_path / "config"))  # the user's config: give it an empty one
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: web/js/prompts.js is not checked against the vectors")
    if node_version(node) < (18, 15):
        pytest.skip(f"Node {node_version(node)} lacks node:test with --test-reporter (needs 18.15+)")
    defs = tmp_path / "node_defs.json"
    defs.write_text(json.dumps(node_definitions()), encoding="utf-8")
    files = sorted(str(p) for p in (TESTS / "js").glob("*.test.mjs"))
    assert files
    proc = subprocess.run([node, "--test", "--test-reporter=tap", *files], cwd=TESTS.parent,
                          env={**os.environ, "SAMKIT_NODE_DEFS": str(defs)}, capture_output=True, text=True,
                          timeout=300)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    # every vector ran as its own test (a loop that read nothing would pass with fewer)
    passed = int(re.search(r"^# pass (\d+)", proc.stdout, re.M).group(1))
    assert passed >= len(PARSE) + len(FORMAT), report
    assert re.search(r"^# fail 0$", proc.stdout, re.M), report
