"""SAM Segment Picker node: one segment of a colour map as a MASK, by point or by colour."""

from __future__ import annotations

from ..samkit.painting import pick_segment


class SamKitSegmentPicker:
    DESCRIPTION = (
        "Turns one segment of a SAM Segmentation Map into a MASK: the segment under the point (x, y), "
        "or every pixel of a given colour. Works on saved maps too, because the map's colours are exact."
    )
    CATEGORY = "SAM Kit"
    FUNCTION = "run"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("The picked segment, one mask per image.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seg_map": ("IMAGE", {"tooltip": "A colour map from SAM Segmentation Map."}),
                "x": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 1, "tooltip": "Pixel column of the segment to pick."}),
                "y": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 1, "tooltip": "Pixel row of the segment to pick."}),
            },
            "optional": {
                "color": ("STRING", {"default": "", "tooltip": "Pick by colour instead (#rrggbb); leave empty to use x and y."}),
            },
        }

    def run(self, seg_map, x, y, color=""):
        return (pick_segment(seg_map, x, y, color),)


NODE_CLASS_MAPPINGS = {"SamKitSegmentPicker": SamKitSegmentPicker}
NODE_DISPLAY_NAME_MAPPINGS = {"SamKitSegmentPicker": "SAM Segment Picker"}
