"""tiny-sam's parameters come from one table (samkit/tiny_sam_params.py), and every place uses it.

The table is checked against its sources (fal's published schema, FastSAM's README); then each
place that shows or enforces a default or a range (the node widgets the browser gets, the request
the local node runs, the fal input schema both ends validate with, the remote client, the CLI) is
checked to give exactly the table's values. What the browser editor makes of the node widgets is
tests/test_prompt_vectors.py's part.
"""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comfyui_sam_kit.nodes.fal_remote import SamKitFalTinySAM
from comfyui_sam_kit.nodes.tiny_sam import SamKitTinySAM
from comfyui_sam_kit.samkit import fastsam, prompts
from comfyui_sam_kit.samkit.fal import remote, schemas
from comfyui_sam_kit.samkit.tiny_sam_params import CONFIDENCE, IOU, NO_BOX, NO_LABEL, NO_POINT, NO_PROMPTS, NUMBERS, SIZE
from comfyui_sam_kit.samkit.tiny_sam_job import TinySamRequest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_fal_config(monkeypatch, tmp_path):
    """The fal node lists endpoints from the user's config: give it an empty one."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("APPDATA", str(tmp_path / "config"))


def test_the_table_is_fals_published_schema_and_fastsams_iou():
    # https://fal.ai/models/fal-ai/tiny-sam/api, "Input": size "Default value: 1024", confidence
    # "Default value: 0.4"; its request example sends box_prompt [[0,0,0,0]], and lists the
    # point_prompt default as 0,0 and point_label's as 0 (i.e. [[0,0]] and [0]).
    assert (SIZE.default, SIZE.integer) == (1024, True)
    assert (CONFIDENCE.default, CONFIDENCE.integer) == (0.4, False)
    assert (NO_BOX.value, NO_POINT.value, NO_LABEL.value) == ([[0, 0, 0, 0]], [[0, 0]], [0])
    # FastSAM's README, everything mode: model(..., imgsz=1024, conf=0.4, iou=0.9)
    assert IOU.default == 0.9
    # the widget texts saved workflows already hold for "no prompt"
    assert (NO_BOX.text, NO_POINT.text, NO_LABEL.text) == ("[[0,0,0,0]]", "[[0,0]]", "[0]")


@pytest.mark.parametrize("param", NUMBERS.values(), ids=NUMBERS)
def test_each_default_lies_in_its_range_on_its_step(param):
    # ComfyUI rounds a widget value to min + k * step: a default off that grid would be changed on load
    assert param.min <= param.default <= param.max
    steps = (param.default - param.min) / param.step
    assert math.isclose(steps, round(steps), abs_tol=1e-9), (param.name, steps)


@pytest.mark.parametrize("node", [SamKitTinySAM, SamKitFalTinySAM], ids=lambda c: c.__name__)
def test_the_node_widgets_the_browser_gets_are_the_table(node):
    required = node.INPUT_TYPES()["required"]
    numbers = [name for name in NUMBERS if name in required]
    # fal publishes no iou, so only the local node has it
    assert numbers == (["size", "confidence", "iou"] if node is SamKitTinySAM else ["size", "confidence"])
    for name in numbers:
        kind, options = required[name]
        p = NUMBERS[name]
        assert kind == p.kind
        assert {k: options[k] for k in ("default", "min", "max", "step")} == p.options(), name
    for name, no_prompt in NO_PROMPTS.items():
        assert required[name][0] == "STRING"
        assert required[name][1]["default"] == no_prompt.text, name


def _defaults(function) -> dict:
    return {k: v.default for k, v in inspect.signature(function).parameters.items()
            if v.default is not inspect.Parameter.empty}


def test_every_python_default_is_the_tables():
    table = {**{n: p.default for n, p in NUMBERS.items()}, **{n: p.text for n, p in NO_PROMPTS.items()}}
    request = TinySamRequest()
    assert {n: getattr(request, n) for n in table} == table
    assert schemas.TINY_SAM_DEFAULTS == {"size": SIZE.default, "confidence": CONFIDENCE.default,
                                         **{n: p.value for n, p in NO_PROMPTS.items()}}
    remote_defaults = _defaults(remote.tiny_sam)
    assert {n: remote_defaults[n] for n in table if n != "iou"} == {n: v for n, v in table.items() if n != "iou"}
    for function in (fastsam.predict_everything, fastsam.segment_prompted, fastsam.segment_everything):
        assert {n: _defaults(function)[n] for n in NUMBERS} == {n: table[n] for n in NUMBERS}, function.__name__
    assert {n: _defaults(prompts.parse_prompts)[n] for n in NO_PROMPTS} == {n: table[n] for n in NO_PROMPTS}


def test_the_cli_defaults_are_the_tables():
    # the parser is built inside main(); swap the command for one that prints what it was given
    code = ("import json, sys, samkit.__main__ as m\n"
            "m.cmd_tinysam = lambda a: print(json.dumps({k: v for k, v in vars(a).items() if k != 'func'})) or 0\n"
            "sys.exit(m.main(['tinysam', 'any.png']))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    args = json.loads(done.stdout.strip().splitlines()[-1])
    assert {n: args[n] for n in NUMBERS} == {n: p.default for n, p in NUMBERS.items()}
    assert {n: args[n] for n in NO_PROMPTS} == {n: p.text for n, p in NO_PROMPTS.items()}


def _cases(p):
    """(value, allowed) at and just past each end of the range, plus values of the wrong type."""
    eps = 1 if p.integer else 0.01
    cases = [(p.min, True), (p.max, True), (p.default, True), (p.min - eps, False), (p.max + eps, False),
             (True, False), (float("nan"), False), ("1", False)]
    if p.integer:
        cases.append((float(p.default), False))  # whole but a float: not an INT
    return cases


@pytest.mark.parametrize("name", NUMBERS)
def test_the_request_enforces_the_tables_ranges(name):
    p = NUMBERS[name]
    for value, allowed in _cases(p):
        request = TinySamRequest(**{name: value})
        if allowed:
            assert request.validate() is request
        else:
            with pytest.raises(ValueError, match=rf"^{name} must be .* from {p.min:g} to {p.max:g}, got "):
                request.validate()


@pytest.mark.parametrize("name", ["size", "confidence"])
def test_the_fal_schema_and_the_remote_client_enforce_the_same_ranges(name):
    p = NUMBERS[name]
    image = torch.zeros((1, 8, 8, 3))
    for value, allowed in _cases(p):
        errors = schemas.validate_tiny_sam({"image_url": "https://example.com/a.png", name: value})
        assert (errors == []) == allowed, (value, errors)
        if not allowed:
            assert errors[0]["loc"] == ["body", name]
            # refused before any endpoint or key is looked up
            with pytest.raises(ValueError, match=rf"^{name} must be .* from {p.min:g} to {p.max:g}, got "):
                remote.tiny_sam(image, **{name: value})
