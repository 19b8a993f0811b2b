"""Tiny SAM node: fal tiny-sam's parameters (FastSAM's), run locally with any SAM Kit model."""

from __future__ import annotations

from .prompt_inputs import linked_prompt_inputs
from ..samkit import sampling_params as S
from ..samkit import tiny_sam_params as P
from ..samkit.tiny_sam_job import TinySamRequest, segment_with_prompts

_D = TinySamRequest()


class SamKitTinySAM:
    DESCRIPTION = (
        "Segments the objects you click or box, with fal.ai tiny-sam's parameters; all coordinates are pixels "
        "of the input image. With FastSAM, prompts pick among the objects FastSAM finds (its own rules); with "
        "MobileSAM, TinySAM, SAM or SAM 2.1 they go to the mask decoder, one object per box, and new prompts on the same "
        "image reuse its cached embedding. With no prompt (the defaults) every object is segmented. For a batch, "
        "give one prompt list per image (one more level of brackets) or one list for all images."
    )
    CATEGORY = "SAM Kit"
    FUNCTION = "run"
    SEARCH_ALIASES = ["tiny sam", "fastsam", "mobilesam", "segment anything", "point prompt", "box prompt"]
    RETURN_TYPES = ("IMAGE", "MASK", "MASK", "BOUNDING_BOX")
    RETURN_NAMES = ("image", "mask", "object_masks", "boxes")
    OUTPUT_TOOLTIPS = (
        "The objects tinted over the image in fixed colours (fal's combined image of all detected masks).",
        "Union of each image's objects, one mask per image.",
        "Each object as its own mask, image after image: each image gives its objects (box objects first, in box "
        "order), or exactly one empty mask if it found none. Image i's masks are the next max(len(boxes[i]), 1).",
        "Each object's box {x, y, width, height, score}, one list per image, in object_masks order; an empty list "
        "for an image with no object (its one empty mask has no box).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("SAMKIT_MODEL", {"tooltip": "From Load SAM Model (SAM Kit): FastSAM, MobileSAM, TinySAM or SAM."}),
                "image": ("IMAGE", {"tooltip": "The image(s) to segment. Prompts apply to each image unless given per image."}),
                "size": (P.SIZE.kind, {**P.SIZE.options(),
                                 "tooltip": "FastSAM: the inference size (imgsz) the image is scaled to; masks still come "
                                            "out at the image's own size. Ignored by SAM-family models, whose input size "
                                            "is fixed by the checkpoint (1024)."}),
                "confidence": (P.CONFIDENCE.kind, {**P.CONFIDENCE.options(),
                                         "tooltip": "Object confidence threshold. FastSAM: detection score. SAM family: "
                                                    "prompted objects with a lower predicted mask quality are dropped "
                                                    "(0 keeps all); not used when there is no prompt."}),
                "iou": (P.IOU.kind, {**P.IOU.options(),
                                  "tooltip": "FastSAM: overlap above which duplicate detections are merged (NMS). "
                                             "Ignored by SAM-family models."}),
                "box_prompt": ("STRING", {"default": _D.box_prompt,
                                          "tooltip": "Boxes [[x, y, width, height], ...] in pixels; each box is one object. "
                                                     "[[0,0,0,0]] = no box."}),
                "point_prompt": ("STRING", {"default": _D.point_prompt,
                                            "tooltip": "Points [[x, y], ...] in pixels. [[0,0]] = no point (click the corner "
                                                       "pixel as [1,0])."}),
                "point_label": ("STRING", {"default": _D.point_label,
                                           "tooltip": "One label per point of point_prompt: 1 = foreground (this object), "
                                                      "0 = background (not this). Set 1 for a click you want segmented."}),
            },
            "optional": {
                **linked_prompt_inputs(),
                "sampling": (list(S.SAMPLING), {"default": S.DEFAULT_SAMPLING,
                                                "tooltip": "With no prompt and a SAM-family model: which prompts segment "
                                                           "everything. " + " ".join(f"{k}: {v}." for k, v in S.HELP.items())}),
                "proposal_model": ("SAMKIT_MODEL", {"tooltip": "object-aware sampling: a FastSAM model whose object boxes "
                                                               "become SAM's prompts."}),
            },
        }

    def run(self, model, image, size, confidence, iou, box_prompt, point_prompt, point_label,
            bboxes=None, positive_coords=None, negative_coords=None, sampling=S.DEFAULT_SAMPLING, proposal_model=None):
        request = TinySamRequest(size=size, confidence=confidence, iou=iou, box_prompt=box_prompt,
                                 point_prompt=point_prompt, point_label=point_label, bboxes=bboxes,
                                 positive_coords=positive_coords, negative_coords=negative_coords, sampling=sampling)
        result = segment_with_prompts(model, image, request, proposals=proposal_model)
        return (result.image, result.mask, result.object_masks, result.boxes)


NODE_CLASS_MAPPINGS = {"SamKitTinySAM": SamKitTinySAM}
NODE_DISPLAY_NAME_MAPPINGS = {"SamKitTinySAM": "Tiny SAM"}
