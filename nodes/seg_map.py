"""SAM Segmentation Map node: segment everything and paint it (the ControlNet "seg" look)."""

from __future__ import annotations

from ..samkit import sampling_params as S
from ..samkit.automask import AutoMaskSettings
from ..samkit.segmap import segmentation_map

_DEFAULTS = AutoMaskSettings()


class SamKitSegmentationMap:
    DESCRIPTION = (
        "Segments everything in each image with a SAM-family model (or FastSAM) and paints the "
        "segments as a colour map at the input's size: largest first so small parts stay visible, "
        "colours fixed by the seed so the same input always gives the same map. Feed the map to a "
        "ControlNet seg model, or pick one segment with SAM Segment Picker / ImageColorToMask."
    )
    CATEGORY = "SAM Kit"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "MASK", "MASK")
    RETURN_NAMES = ("seg_map", "segments", "coverage")
    OUTPUT_TOOLTIPS = (
        "Colour segmentation map, same size as the input.",
        "Every segment as its own mask, image after image: each image gives its segments largest first (at most "
        "max_segments), or exactly one empty mask if it has none, so every image has at least one mask.",
        "Everything that was segmented, one mask per image.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        d = _DEFAULTS
        return {
            "required": {
                "model": ("SAMKIT_MODEL", {"tooltip": "From Load SAM Model (SAM Kit). SAM vit_b/l/h, MobileSAM, TinySAM or FastSAM."}),
                "image": ("IMAGE", {"tooltip": "Images to segment; every image of the batch is processed."}),
                "points_per_side": ("INT", {"default": d.points_per_side, "min": 1, "max": 128, "step": 1,
                                            "tooltip": "Grid of prompt points per side (32 = 1024 points). More finds smaller parts and takes longer. SAM models only."}),
                "pred_iou_thresh": ("FLOAT", {"default": d.pred_iou_thresh, "min": 0.0, "max": 1.0, "step": 0.01,
                                              "tooltip": "Drop masks the model itself rates below this quality."}),
                "stability_score_thresh": ("FLOAT", {"default": d.stability_score_thresh, "min": 0.0, "max": 1.0, "step": 0.01,
                                                     "tooltip": "Drop masks whose outline moves when the cut-off shifts (unstable masks)."}),
                "min_mask_region_area": ("INT", {"default": d.min_mask_region_area, "min": 0, "max": 1 << 24, "step": 1,
                                                 "tooltip": "Remove islands and fill holes smaller than this many pixels (0 = off)."}),
                "crop_n_layers": ("INT", {"default": d.crop_n_layers, "min": 0, "max": 3, "step": 1,
                                          "tooltip": "Also segment zoomed-in crops (1 = 4 extra crops, 2 = 16 more). Finds small objects; much slower."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "step": 1,
                                 "tooltip": "Picks the colour palette. Same seed, same colours."}),
            },
            "optional": {
                "box_nms_thresh": ("FLOAT", {"default": d.box_nms_thresh, "min": 0.0, "max": 1.0, "step": 0.01,
                                             "tooltip": "Overlap above which duplicate masks are merged away."}),
                "points_per_batch": ("INT", {"default": d.points_per_batch, "min": 1, "max": 1024, "step": 1,
                                             "tooltip": "Points run through the decoder at once. Higher is faster on a GPU and uses more memory; the result is the same."}),
                "max_segments": ("INT", {"default": 0, "min": 0, "max": 100000, "step": 1,
                                         "tooltip": "Most segments per image in the segments output, the largest kept (0 = no limit); "
                                                    "the map and coverage still show every segment. Each segment is a full-size float "
                                                    "mask (a 4096×3072 image: 50 MB each): if the outputs would not fit in free memory "
                                                    "the node stops at once and says which value fits."}),
                "sampling": (list(S.SAMPLING), {"default": S.DEFAULT_SAMPLING,
                                                "tooltip": "Which prompts SAM decodes (SAM models only). " + " ".join(
                                                    f"{k}: {v}." for k, v in S.HELP.items())}),
                "proposal_model": ("SAMKIT_MODEL", {"tooltip": "object-aware sampling: a FastSAM model (Load SAM Model "
                                                               "with FastSAM-s.pt) whose object boxes become SAM's prompts."}),
            },
        }

    def run(self, model, image, points_per_side, pred_iou_thresh, stability_score_thresh,
            min_mask_region_area, crop_n_layers, seed, box_nms_thresh=_DEFAULTS.box_nms_thresh,
            points_per_batch=_DEFAULTS.points_per_batch, max_segments=0, sampling=S.DEFAULT_SAMPLING,
            proposal_model=None):
        settings = AutoMaskSettings(
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers,
            min_mask_region_area=min_mask_region_area,
        )
        result = segmentation_map(model, image, settings, seed, max_segments=max_segments, sampling=sampling,
                                  proposals=proposal_model)
        return (result.seg_map, result.segments, result.coverage)


NODE_CLASS_MAPPINGS = {"SamKitSegmentationMap": SamKitSegmentationMap}
NODE_DISPLAY_NAME_MAPPINGS = {"SamKitSegmentationMap": "SAM Segmentation Map"}
