"""Everything mode's ``sampling`` choice, defined once: the choices, the default a user gets, and
each mode's own constants. The seg map and Tiny SAM nodes (their widgets and tooltips), the CLI
(``--sampling``), the self-hosted server (``sampling`` argument) and ``automask_sampling`` read it.

* ``grid``: segment-anything's ``SamAutomaticMaskGenerator``: ``points_per_side``² foreground
  points, three masks each (same segments as the reference on the same checkpoint).
* ``hierarchical``: TinySAM's hierarchical everything (arXiv 2312.13789; xinghaochen/TinySAM
  ``SamHierarchicalMaskGenerator``): a sparse grid of ``points_per_side // 4`` per side first; then
  the dense grid's points, skipping every point that already lies where a kept mask of the sparse
  pass is confident (:data:`CONFIDENT_QUANTILE`); both passes' masks go through the
  same filters and one NMS. Big objects are found by the sparse points and cost no dense point.
* ``object-aware``: MobileSAMv2 (arXiv 2312.09579): a FastSAM model (YOLOv8-seg) finds the objects;
  its boxes after its own NMS become one SAM box prompt each (the single-mask output); then a
  residual pass of ``points_per_side // RESIDUAL_DIVISOR`` per side points, skipping those inside
  the confident core of a kept box mask (:data:`RESIDUAL_COVER`), finds what the proposal model
  missed. All masks go through SAM's predicted-IoU and stability filters and one box NMS. Needs the
  proposal model.

The default is ``hierarchical`` (README, "Everything mode: sampling", gives the measurements): it
needs nothing but the SAM model, finds the same shapes as the grid on the test scenes, and decodes
far fewer prompts. ``object-aware`` is the fastest but needs a second model; ``grid`` is the one
that equals the reference.
"""

from __future__ import annotations

GRID = "grid"
HIERARCHICAL = "hierarchical"
OBJECT_AWARE = "object-aware"
#: every choice, in the order widgets and ``--help`` list them
SAMPLING = (GRID, HIERARCHICAL, OBJECT_AWARE)
#: what a user gets without choosing (see the module docstring for why)
DEFAULT_SAMPLING = HIERARCHICAL

#: hierarchical: the sparse pass's points per side is the dense one's divided by this (TinySAM: 4)
SPARSE_DIVISOR = 4
#: hierarchical: a dense point is skipped where a kept sparse-pass mask is confident, i.e. where its
#: logit is above this quantile of that mask's own pixels' logits (its most confident 40 %: the
#: inside of an object, not its edges). TinySAM uses a fixed logit (``high_score_thresh`` 8.5) tuned
#: to SAM vit_h; a fixed logit depends on the checkpoint's scale: the trained test SAM's logits peak
#: at 5-8, so 8.5 skipped no point there and hierarchical cost more than grid (3243 decoded outputs
#: against 3072 on 4 held-out scenes). Measured on the 10 held-out scenes (46 shapes, 16x16 grid):
#: quantile 0.6 kept the grid's recall (0.870) with 2592 outputs against 7680; 0.5 lost a shape.
#: Re-measured on the quality tests' 8 held-out scenes (45 shapes; tests/test_everything_quality.py):
#: 0.6 found 34 shapes where the grid finds 35 (recall 0.756, 0.002 outside the issue's 0.02), 0.7
#: all 35 with 2586 outputs against the grid's 6144; on four 640x480 scenes at 32x32 points 22/32
#: where the grid finds 23 (0.6: 21), 4665 outputs against 12288. 0.8 costs 2955 / 5724.
CONFIDENT_QUANTILE = 0.7

#: object-aware: FastSAM's proposal settings, MobileSAMv2's (its Inference.py: imgsz 1024, conf 0.4,
#: iou 0.9), which are also FastSAM's own everything-mode defaults (tiny_sam_params). The image size
#: is the proposal model's own training size when its checkpoint records one (FastSAM-s/x: 1024;
#: automask_sampling.proposal_size), else this: a detector finds objects at the scale it learned.
#: The test FastSAM (trained at 256) given 640x480 scenes at 1024 proposed boxes that matched 3 of
#: 32 shapes (box IoU >= 0.7), at 640 16, at its own 256 27.
PROPOSAL_SIZE = 1024
#: object-aware's residual pass: points_per_side // RESIDUAL_DIVISOR points per side. Measured
#: (README, "Everything mode: sampling"): boxes alone found 19 of 45 shapes where the grid finds 35;
#: a residual pass at divisor 4, 3, 2 found 27, 33, 33 (382, 658, 1597 outputs against the grid's
#: 6144), a full-density one 35 (~5000 outputs: no saving); on four 640x480 scenes (32x32 points)
#: divisor 3 found 22/32 shapes, 2 the grid's 23/32 (3005 outputs against 12288).
RESIDUAL_DIVISOR = 2
#: object-aware: a residual point is skipped inside the top 10 % of a kept box mask's logits (its
#: core). Skipping inside the whole mask (0.0) lost a shape whose box gave a bad mask (IoU 0.59) that
#: covered the point which finds it (32/45 instead of 33).
RESIDUAL_COVER = 0.9
PROPOSAL_CONFIDENCE = 0.4
PROPOSAL_IOU = 0.9

HELP = {
    GRID: "a points_per_side² point grid, SAM's automatic mask generator (the reference; slowest)",
    HIERARCHICAL: "TinySAM's: a sparse grid first, dense points only where no confident mask lies yet (default)",
    OBJECT_AWARE: "MobileSAMv2's: one SAM box prompt per object a FastSAM proposal model finds (fastest; "
                  "needs the proposal model)",
}

def check_sampling(value) -> str:
    """``value`` when it is one of :data:`SAMPLING`; ValueError naming ``sampling`` and the choices otherwise."""
    if not isinstance(value, str) or value not in SAMPLING:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLING)}; got {value!r}")
    return value


def missing_proposals() -> str:
    """The error for object-aware sampling without a proposal model: what to connect, on every entry point."""
    return ("sampling 'object-aware' needs a FastSAM proposal model: connect one (Load SAM Model with FastSAM-s.pt "
            "or FastSAM-x.pt) to the node's proposal_model input, or give --proposal-model on the command line or to "
            "'python -m samkit serve'; or choose sampling 'hierarchical' or 'grid', which need none")
