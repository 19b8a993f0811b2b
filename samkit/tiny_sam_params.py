"""fal ``tiny-sam``'s parameters, defined once: defaults, ranges and the "no prompt" values.

Everything else reads this table: ``tiny_sam_job.TinySamRequest`` (defaults and checks), ``fastsam``'s
function defaults, ``prompts.parse_prompts`` (which point and box mean "none"), ``fal/schemas``
(fal's input defaults and 422 checks), ``fal/remote.tiny_sam``, the CLI, the self-hosted server
(through ``schemas`` and ``TinySamRequest``) and the node widgets (:meth:`NumberParam.options`,
:attr:`NoPrompt.text`). The browser editor (``web/js/prompts.js``) holds no copy: it reads the
"no prompt" texts from the prompt widgets' defaults in the node definitions ComfyUI sends it
(``tests/test_prompt_vectors.py`` runs it against the same node definitions and test vectors).

Sources:

* fal-ai/tiny-sam's published input schema (https://fal.ai/models/fal-ai/tiny-sam/api):
  ``size`` integer, default 1024; ``confidence`` float, default 0.4; ``box_prompt``
  ``[[x, y, w, h], ...]`` default ``[[0,0,0,0]]``; ``point_prompt`` ``[[x, y], ...]`` default
  ``[[0,0]]``; ``point_label`` ``[1|0, ...]`` default ``[0]``. As in FastSAM, these defaults mean
  "no prompt": a point equal to the default's point, or a box equal to its box, is skipped.
* ``iou``: fal publishes none; 0.9 is FastSAM's own everything-mode setting (the FastSAM README's
  example: ``imgsz=1024, conf=0.4, iou=0.9``).
* Ranges and steps are this pack's: ``size`` 32..4096 in steps of 32 (FastSAM's stride is 32),
  ``confidence`` and ``iou`` are fractions, 0..1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Union

Number = Union[int, float]


@dataclass(frozen=True)
class NumberParam:
    """One numeric parameter: ``default`` inside ``[min, max]``, widget ``step``; ``integer`` for INT."""

    name: str
    default: Number
    min: Number
    max: Number
    step: Number
    integer: bool = False
    unit: str = ""  # for messages: "size must be a whole number of pixels ..."

    @property
    def kind(self) -> str:
        """ComfyUI's widget type for it: ``"INT"`` or ``"FLOAT"``."""
        return "INT" if self.integer else "FLOAT"

    def options(self) -> dict:
        """The widget's ``default``/``min``/``max``/``step`` (add ``tooltip`` and the like to it)."""
        return {"default": self.default, "min": self.min, "max": self.max, "step": self.step}

    def check(self, value: Any) -> Any:
        """``value`` when it is in range; ValueError naming the parameter and its range otherwise.

        bool is refused (it is an int in Python); INT parameters refuse floats, even whole ones.
        """
        types = int if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, types) or not self.min <= value <= self.max:
            what = "a whole number" if self.integer else "a number"
            unit = f" of {self.unit}" if self.unit else ""
            raise ValueError(f"{self.name} must be {what}{unit} from {self.min:g} to {self.max:g}, got {value!r}")
        return value


@dataclass(frozen=True)
class NoPrompt:
    """A prompt input's "no prompt" default: fal's one-entry list ``[item]``."""

    name: str  # the input (fal field and node widget)
    item: Any  # its one entry: a point (x, y), a box (x, y, w, h) or a label

    @property
    def value(self) -> list:
        """As JSON data, e.g. ``[[0, 0]]`` (a new list each time, so callers may keep it)."""
        return json.loads(self.text)

    @property
    def text(self) -> str:
        """As widget text, compact like fal's docs: ``[[0,0]]``."""
        item = list(self.item) if isinstance(self.item, tuple) else self.item
        return json.dumps([item], separators=(",", ":"))

    def matches(self, entry: Any) -> bool:
        """``entry`` is the "none" entry: a point or box of numbers (``[0.0, 0]`` matches ``(0, 0)``)
        or a label."""
        return tuple(entry) == self.item if isinstance(self.item, tuple) else entry == self.item


SIZE = NumberParam("size", 1024, 32, 4096, 32, integer=True, unit="pixels")
CONFIDENCE = NumberParam("confidence", 0.4, 0.0, 1.0, 0.01)
IOU = NumberParam("iou", 0.9, 0.0, 1.0, 0.01)
NUMBERS = {p.name: p for p in (SIZE, CONFIDENCE, IOU)}

NO_BOX = NoPrompt("box_prompt", (0, 0, 0, 0))
NO_POINT = NoPrompt("point_prompt", (0, 0))
NO_LABEL = NoPrompt("point_label", 0)
NO_PROMPTS = {p.name: p for p in (NO_BOX, NO_POINT, NO_LABEL)}
