"""Tiny SAM node: fal tiny-sam's parameters (FastSAM's), run locally."""

from __future__ import annotations

from . import comfy_bridge  # noqa: F401
from ..samkit.tinysam import TinySamRequest, segment_with_prompts

_D = TinySamRequest()


class SamKitTinySAM:
    DESCRIPTION = (
        "Segments the objects you point at or box, with fal.ai tiny-sam's parameters (pixel coordinates "
        "of the input image). With FastSAM, prompts pick among the instances FastSAM finds; with MobileSAM, "
        "TinySAM or SAM they go to SAM's decoder, and editing prompts on the same image skips the image "
        "encoder. No prompt segments everything. Click points and drag boxes on the node's editor."
    )
    CATEGORY = "SAM Kit"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "MASK", "MASK", "BOUNDING_BOX")
    RETURN_NAMES = ("image", "mask", "object_masks", "boxes")
    OUTPUT_TOOLTIPS = (
        "The objects painted over the image (like fal's combined image of all detected masks).",
        "Union of the selected objects, one mask per image.",
        "Each object as its own mask, all images one after another (an image with no object gives one empty mask).",
        "Each object's box {x, y, width, height}; one list per image for batches.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("SAMKIT_MODEL", {"tooltip": "From Load SAM Model (SAM Kit): FastSAM, MobileSAM, TinySAM or SAM."}),
                "image": ("IMAGE", {"tooltip": "Images to segment; the same prompts apply to each, unless given per image."}),
                "size": ("INT", {"default": _D.size, "min": 32, "max": 4096, "step": 32,
                                 "tooltip": "FastSAM's inference size (imgsz). SAM-family models have a fixed input size and ignore it."}),
                "confidence": ("FLOAT", {"default": _D.confidence, "min": 0.0, "max": 1.0, "step": 0.01,
                                         "tooltip": "Object confidence threshold: FastSAM's detection score, or SAM's predicted mask quality."}),
                "iou": ("FLOAT", {"default": _D.iou, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "FastSAM's overlap threshold for merging duplicate instances (not used by SAM models)."}),
                "box_prompt": ("STRING", {"default": _D.box_prompt,
                                          "tooltip": "Boxes [[x,y,w,h],...] in pixels. [[0,0,0,0]] = no box."}),
                "point_prompt": ("STRING", {"default": _D.point_prompt,
                                            "tooltip": "Points [[x,y],...] in pixels. [[0,0]] = no point."}),
                "point_label": ("STRING", {"default": _D.point_label,
                                           "tooltip": "One label per point: 1 = foreground (include), 0 = background (exclude)."}),
            },
            "optional": {
                "bboxes": ("BOUNDING_BOX", {"tooltip": "Boxes from another node ({x, y, width, height}), added to box_prompt."}),
                "positive_coords": ("STRING", {"forceInput": True, "tooltip": "Foreground points as JSON [{\"x\":..,\"y\":..}] (KJNodes PointsEditor)."}),
                "negative_coords": ("STRING", {"forceInput": True, "tooltip": "Background points as JSON [{\"x\":..,\"y\":..}] (KJNodes PointsEditor)."}),
            },
        }

    def run(self, model, image, size, confidence, iou, box_prompt, point_prompt, point_label,
            bboxes=None, positive_coords=None, negative_coords=None):
        request = TinySamRequest(size=size, confidence=confidence, iou=iou, box_prompt=box_prompt,
                                 point_prompt=point_prompt, point_label=point_label, bboxes=bboxes,
                                 positive_coords=positive_coords, negative_coords=negative_coords)
        result = segment_with_prompts(model, image, request)
        return (result.image, result.mask, result.object_masks, result.boxes)


NODE_CLASS_MAPPINGS = {"SamKitTinySAM": SamKitTinySAM}
NODE_DISPLAY_NAME_MAPPINGS = {"SamKitTinySAM": "Tiny SAM"}
