"""Remote nodes: the Tiny SAM and Segmentation Map jobs on fal.ai, or on a self-hosted server
(``python -m samkit serve``) that speaks the same queue protocol.

The workflow only names the endpoint ("fal" or a self-hosted server's name). Its address and key
come from this machine (FAL_KEY, or the config file described in ``samkit/fal/keys.py``), so a
shared workflow or PNG never carries a key.
"""

from __future__ import annotations

from .prompt_inputs import linked_prompt_inputs
from ..samkit import tiny_sam_params as P
from ..samkit.fal import remote
from ..samkit.fal.keys import list_targets
from ..samkit.tiny_sam_job import TinySamRequest

_D = TinySamRequest()

_ENDPOINT_TOOLTIP = (
    "Where the job runs: 'fal' (fal.ai; key from the FAL_KEY environment variable or the [fal] section of "
    "comfyui-sam-kit/fal.ini in your config folder: ~/.config on Linux and macOS, %APPDATA% on Windows), or a "
    "self-hosted server (python -m samkit serve) listed in that file as [name] with base_url and key. "
    "Keys never go in the workflow."
)
_TIMEOUT_TOOLTIP = (
    "Seconds to wait for each image, queue time included. When they pass, the remote job is cancelled "
    "(so it is not billed further) and the node fails."
)


def _endpoint_input() -> tuple:
    return (list_targets(), {"default": "fal", "tooltip": _ENDPOINT_TOOLTIP})


def _timeout_input() -> tuple:
    return ("INT", {"default": remote.DEFAULT_TIMEOUT_S, "min": 5, "max": 3600, "step": 5, "tooltip": _TIMEOUT_TOOLTIP})


class SamKitFalTinySAM:
    DESCRIPTION = (
        "Tiny SAM on fal.ai (fal-ai/tiny-sam) or your own server: the objects you click or box, with fal's "
        "parameters. All coordinates are pixels of the input image; each image of a batch is one request, "
        "sent at the same time as the others. Returns fal's combined image and the mask of what it found, "
        "at the input's size. Cancel in ComfyUI cancels the remote jobs."
    )
    CATEGORY = "SAM Kit"
    FUNCTION = "run"
    SEARCH_ALIASES = ["fal", "tiny sam", "remote", "fastsam", "point prompt", "box prompt"]
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = (
        "fal's combined image: the found objects painted over the input.",
        "Where objects were found (the painted pixels), one mask per image.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The image(s) to segment, sent as lossless PNG."}),
                "size": (P.SIZE.kind, {**P.SIZE.options(),
                                 "tooltip": "Inference size the server scales the image to (fal's 'size'); the mask "
                                            "still comes back at the input's size."}),
                "confidence": (P.CONFIDENCE.kind, {**P.CONFIDENCE.options(),
                                         "tooltip": "Object confidence threshold (fal's 'confidence')."}),
                "box_prompt": ("STRING", {"default": _D.box_prompt,
                                          "tooltip": "Boxes [[x, y, width, height], ...] in pixels. [[0,0,0,0]] = no box."}),
                "point_prompt": ("STRING", {"default": _D.point_prompt,
                                            "tooltip": "Points [[x, y], ...] in pixels. [[0,0]] = no point."}),
                "point_label": ("STRING", {"default": _D.point_label,
                                           "tooltip": "One label per point: 1 = foreground, 0 = background."}),
                "endpoint": _endpoint_input(),
            },
            "optional": {**linked_prompt_inputs(), "timeout": _timeout_input()},
        }

    def run(self, image, size, confidence, box_prompt, point_prompt, point_label, endpoint,
            bboxes=None, positive_coords=None, negative_coords=None, timeout=remote.DEFAULT_TIMEOUT_S):
        result = remote.tiny_sam(image, size=size, confidence=confidence, box_prompt=box_prompt,
                                 point_prompt=point_prompt, point_label=point_label, bboxes=bboxes,
                                 positive_coords=positive_coords, negative_coords=negative_coords,
                                 endpoint=endpoint, timeout=timeout)
        return (result.image, result.mask)


class SamKitFalSegmentationMap:
    DESCRIPTION = (
        "SAM segmentation map on fal.ai (fal-ai/image-preprocessors/sam) or your own server: everything in "
        "the image segmented and painted as a colour map, at the input's size. Each image of a batch is one "
        "request, sent at the same time as the others. Cancel in ComfyUI cancels the remote jobs."
    )
    CATEGORY = "SAM Kit"
    FUNCTION = "run"
    SEARCH_ALIASES = ["fal", "segmentation map", "seg map", "remote", "controlnet seg"]
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("seg_map", "coverage")
    OUTPUT_TOOLTIPS = (
        "Colour segmentation map, same size as the input (colours kept exact for SAM Segment Picker).",
        "Everything that was segmented (every non-black pixel of the map), one mask per image.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Images to segment, sent as lossless PNG; every image of the batch is processed."}),
                "endpoint": _endpoint_input(),
            },
            "optional": {
                "timeout": _timeout_input(),
            },
        }

    def run(self, image, endpoint, timeout=remote.DEFAULT_TIMEOUT_S):
        result = remote.segmentation_map(image, endpoint=endpoint, timeout=timeout)
        return (result.seg_map, result.coverage)


NODE_CLASS_MAPPINGS = {
    "SamKitFalTinySAM": SamKitFalTinySAM,
    "SamKitFalSegmentationMap": SamKitFalSegmentationMap,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SamKitFalTinySAM": "Tiny SAM (fal)",
    "SamKitFalSegmentationMap": "SAM Segmentation Map (fal)",
}
