"""No float64 tensor is made by the pack's code: Apple's MPS has no float64, so one there fails the job.

There is no Mac here, so the rule is checked where it is made: while the jobs run (seg map,
Tiny SAM with a click, a box, points and no prompt, on the SAM and FastSAM fixtures, and the
segment picker), a ``TorchFunctionMode`` sees the result of every torch function and tensor
method; a float64 result whose innermost caller outside torch is a file of ``samkit/`` fails
the test, naming the line. That is stricter than MPS needs (a float64 tensor on the CPU would
do no harm on a Mac), and it is the only form that can be checked on a CPU, where every tensor
is on the model's device. Calls made inside segment-anything and ultralytics are theirs, out of
this pack's hands; the mode records them, and the test only reports them.

The check itself is tested: ``samkit/fastsam.py`` as it was before issue 13 (box and point
tensors built as float64 on the model's device) fails it.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from comfyui_sam_kit.nodes.seg_map import SamKitSegmentationMap
from comfyui_sam_kit.nodes.segment_picker import SamKitSegmentPicker
from comfyui_sam_kit.nodes.tiny_sam import SamKitTinySAM
from comfyui_sam_kit.samkit import fastsam, loader
from testsupport.trained import TRAINED_SAM_PATH, heldout_scene, interior_point
from testsupport.trained_fastsam import TRAINED_FASTSAM_PATH, xywh_of

SAMKIT = (Path(__file__).resolve().parents[1] / "samkit").as_posix() + "/"
TORCH = Path(torch.__file__).resolve().parent.as_posix() + "/"


class Float64Trap(TorchFunctionMode):
    """Records float64 results of torch calls, split by whose code made the call (samkit or not)."""

    def __init__(self):
        super().__init__()
        self.ours: list[str] = []
        self.theirs: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        results = out if isinstance(out, (tuple, list)) else (out,)
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in results):
            caller = self._caller()
            if caller is not None:
                where = f"{getattr(func, '__qualname__', func)} at {caller.filename}:{caller.lineno}"
                (self.ours if Path(caller.filename).resolve().as_posix().startswith(SAMKIT) else self.theirs).append(where)
        return out

    @staticmethod
    def _caller():
        """The innermost stack frame outside torch and outside this file."""
        for frame in reversed(traceback.extract_stack()[:-2]):
            path = Path(frame.filename).resolve().as_posix()
            if not path.startswith(TORCH) and path != Path(__file__).resolve().as_posix():
                return frame
        return None


def _tensor(image_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image_u8).float()[None] / 255.0


def _widgets(**kw) -> dict:
    args = dict(size=256, confidence=0.0, iou=0.9, box_prompt="[[0,0,0,0]]", point_prompt="[[0,0]]", point_label="[0]")
    args.update({k: json.dumps(v) for k, v in kw.items()})
    return args


def _run_jobs(model, scene) -> None:
    image = _tensor(scene.image)
    x, y = interior_point(scene.masks[0])
    bx, by = interior_point(scene.masks[1])
    tiny = SamKitTinySAM()
    tiny.run(model, image, **_widgets(point_prompt=[[x, y]], point_label=[1]))
    tiny.run(model, image, **_widgets(box_prompt=[xywh_of(scene.boxes_xyxy[0])]))
    tiny.run(model, image, **_widgets(point_prompt=[[x, y], [bx, by]], point_label=[1, 0],
                                      box_prompt=[xywh_of(scene.boxes_xyxy[0])]))
    tiny.run(model, image, **_widgets(point_prompt=[[bx, by]], point_label=[0]))  # background only
    seg_map = SamKitSegmentationMap().run(model, image, points_per_side=8, pred_iou_thresh=0.5,
                                          stability_score_thresh=0.7, min_mask_region_area=20, crop_n_layers=1,
                                          seed=0)[0]
    SamKitSegmentPicker().run(seg_map, x, y)
    SamKitSegmentPicker().run(seg_map, 0, 0, color="#ff0000")


@pytest.fixture(scope="module")
def models():
    return {name: loader.load_model(str(path), device="cpu", precision=precision)
            for name, path, precision in [("sam", TRAINED_SAM_PATH, "fp32"), ("sam-bf16", TRAINED_SAM_PATH, "bf16"),
                                          ("fastsam", TRAINED_FASTSAM_PATH, "fp32")]}


@pytest.mark.parametrize("name", ["sam", "sam-bf16", "fastsam"])
def test_jobs_make_no_float64_tensor(models, name):
    scene = heldout_scene(20, 200, 300)
    with Float64Trap() as trap:
        _run_jobs(models[name], scene)
    assert not trap.ours, "float64 tensors made by samkit (MPS has no float64):\n" + "\n".join(trap.ours)
    if trap.theirs:  # third-party code, out of this pack's hands: reported, not failed
        print("float64 results inside reference libraries:", *sorted(set(trap.theirs)), sep="\n  ", file=sys.stderr)


# ``fastsam.select`` as it was before issue 13, verbatim: box and point tensors built as float64
# on the masks' device (every prompted FastSAM run on a Mac failed).
_FLOAT64_SELECT_SOURCE = '''
def select(masks: torch.Tensor, prompts: ImagePrompts) -> tuple[torch.Tensor, list[int]]:
    """FastSAM's prompt selection over ``masks`` ``[N,H,W]`` (uint8 or bool).

    Returns the bool selection ``[N]`` (exactly ultralytics' ``prompt`` result) and, for the
    pack's object order, the indices picked by each box in box order (a box that picks the same
    mask as an earlier box adds nothing).
    """
    n, h, w = masks.shape
    device = masks.device
    chosen = torch.zeros(n, dtype=torch.bool, device=device)
    by_box: list[int] = []
    if n == 0:
        return chosen, by_box
    if prompts.boxes:
        # ultralytics: int32 conversion (truncation), then clip to [0, w] × [0, h]
        boxes = torch.as_tensor(prompts.boxes, dtype=torch.float64, device=device).to(torch.int32)
        boxes[:, 0].clamp_(0, w)
        boxes[:, 1].clamp_(0, h)
        boxes[:, 2].clamp_(0, w)
        boxes[:, 3].clamp_(0, h)
        box_areas = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 2] - boxes[:, 0])
        inside = torch.stack([masks[:, b[1] : b[3], b[0] : b[2]].sum(dim=(1, 2)) for b in boxes.tolist()])
        full = masks.sum(dim=(1, 2))
        union = box_areas[:, None] + full - inside
        best = torch.argmax(inside / union, dim=1)
        chosen[best] = True
        for i in best.tolist():
            if i not in by_box:
                by_box.append(i)
    if prompts.points:
        coords = torch.as_tensor(prompts.points, dtype=torch.float64, device=device).to(torch.int64)
        coords[:, 0].clamp_(0, w - 1)
        coords[:, 1].clamp_(0, h - 1)
        labels = torch.as_tensor(prompts.labels, dtype=torch.int32, device=device)
        under = masks[:, coords[:, 1], coords[:, 0]].bool()
        if labels.sum() == 0:  # background points only: start from every mask
            picked = torch.ones(n, dtype=torch.bool, device=device)
        else:
            picked = under[:, labels == 1].any(1)
        picked &= ~under[:, labels == 0].any(1)
        chosen |= picked
    return chosen, by_box
'''


def test_the_trap_catches_the_float64_tensors_fastsam_made_before_the_fix(models, monkeypatch):
    # compiled under samkit/fastsam.py's file name, as the code was there; the trap must name it
    code = compile(_FLOAT64_SELECT_SOURCE, fastsam.__file__, "exec")
    namespace = {"torch": torch, "ImagePrompts": fastsam.ImagePrompts}
    exec(code, namespace)
    monkeypatch.setattr(fastsam, "select", namespace["select"])
    with Float64Trap() as trap:
        _run_jobs(models["fastsam"], heldout_scene(20, 200, 300))
    assert any("as_tensor" in where and where.split(" at ")[1].startswith(fastsam.__file__) for where in trap.ours), trap.ours
