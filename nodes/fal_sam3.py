"""The ``SAM 3 (fal)`` node: fal's current SAM endpoints (``fal-ai/sam-3/image`` and its RLE and
3.1 twins with a text prompt, points and boxes; ``fal-ai/sam2/auto-segment`` for everything) as
per-object MASKs, a union and scored boxes. The work is ``samkit/fal/sam3_remote.py``; where the
job goes and the key come from this machine (``samkit/fal/keys.py``), never from the workflow.
"""

from __future__ import annotations

from .fal_remote import _endpoint_input, _timeout_input
from .prompt_inputs import linked_prompt_inputs
from ..samkit.fal import sam3_remote
from ..samkit.fal.sam3_schemas import AUTO_SEGMENT_DEFAULTS, MAX_MASKS
from ..samkit.tiny_sam_job import TinySamRequest

_D = TinySamRequest()


class SamKitFalSAM3:
    DESCRIPTION = (
        "SAM 3 on fal.ai: objects found by a text prompt (e.g. 'dog', 'red car') and/or clicked and boxed "
        "(fal-ai/sam-3/image; each box is one object, points inside a box refine it, like the local Tiny SAM "
        "node), or every segment of the image (job 'everything': fal-ai/sam2/auto-segment). Returns one mask "
        "per object, their union per image and scored boxes, at the input's size. Each image of a batch is "
        "one request, sent at once; the request is checked against fal's schema before it is sent. Cancel in "
        "ComfyUI cancels the remote jobs."
    )
    CATEGORY = "SAM Kit"
    FUNCTION = "run"
    SEARCH_ALIASES = ["fal", "sam 3", "sam3", "text prompt", "remote", "auto segment", "segment anything"]
    RETURN_TYPES = ("MASK", "MASK", "BOUNDING_BOX")
    RETURN_NAMES = ("object_masks", "mask", "boxes")
    OUTPUT_TOOLTIPS = (
        "One mask per object found, image after image; an image with none gives one empty mask. Image i's "
        "masks are the next max(len(boxes[i]), 1).",
        "Everything found, one mask per image.",
        "Per image, a list of {x, y, width, height, score} in pixels (score where fal sent one).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The image(s) to segment, sent as lossless PNG."}),
                "job": (list(sam3_remote.JOBS), {"default": "sam-3 (masks)",
                                                 "tooltip": "Which fal endpoint: sam-3/image (mask images), "
                                                            "sam-3/image-rle (masks as run-length text, smaller "
                                                            "answers), their sam-3-1 versions, or sam2/auto-segment "
                                                            "(every segment; the prompts are not used)."}),
                "prompt": ("STRING", {"default": "", "multiline": False,
                                      "tooltip": "What to find, in words (fal's 'prompt'). Empty: points and boxes "
                                                 "only."}),
                "box_prompt": ("STRING", {"default": _D.box_prompt,
                                          "tooltip": "Boxes [[x, y, width, height], ...] in pixels, one object each. "
                                                     "[[0,0,0,0]] = no box."}),
                "point_prompt": ("STRING", {"default": _D.point_prompt,
                                            "tooltip": "Points [[x, y], ...] in pixels. [[0,0]] = no point."}),
                "point_label": ("STRING", {"default": _D.point_label,
                                           "tooltip": "One label per point: 1 = foreground, 0 = background."}),
                "max_masks": ("INT", {"default": 3, "min": 1, "max": MAX_MASKS,
                                      "tooltip": "At most this many masks per image (fal's max_masks)."}),
                "endpoint": _endpoint_input(),
            },
            "optional": {
                **linked_prompt_inputs(),
                "points_per_side": ("INT", {"default": AUTO_SEGMENT_DEFAULTS["points_per_side"], "min": 1, "max": 128,
                                            "tooltip": "Everything job: point grid per side."}),
                "pred_iou_thresh": ("FLOAT", {"default": AUTO_SEGMENT_DEFAULTS["pred_iou_thresh"], "min": 0.0,
                                              "max": 1.0, "step": 0.01,
                                              "tooltip": "Everything job: keep masks whose predicted IoU is above."}),
                "stability_score_thresh": ("FLOAT", {"default": AUTO_SEGMENT_DEFAULTS["stability_score_thresh"],
                                                     "min": 0.0, "max": 1.0, "step": 0.01,
                                                     "tooltip": "Everything job: keep masks whose stability score "
                                                                "is above."}),
                "min_mask_region_area": ("INT", {"default": AUTO_SEGMENT_DEFAULTS["min_mask_region_area"], "min": 0,
                                                 "max": 1 << 20,
                                                 "tooltip": "Everything job: smallest region kept, in pixels."}),
                "timeout": _timeout_input(),
            },
        }

    def run(self, image, job, prompt, box_prompt, point_prompt, point_label, max_masks, endpoint, **optional):
        result = sam3_remote.segment(image, job=job, prompt=prompt, box_prompt=box_prompt, point_prompt=point_prompt,
                                     point_label=point_label, max_masks=max_masks, endpoint=endpoint, **optional)
        return (result.object_masks, result.mask, result.boxes)


NODE_CLASS_MAPPINGS = {"SamKitFalSAM3": SamKitFalSAM3}
NODE_DISPLAY_NAME_MAPPINGS = {"SamKitFalSAM3": "SAM 3 (fal)"}
