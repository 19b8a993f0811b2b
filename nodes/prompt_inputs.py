"""Prompt inputs shared by the local and remote Tiny SAM nodes (same names, same meaning)."""

from __future__ import annotations


def linked_prompt_inputs() -> dict:
    """Optional sockets for prompts made by other nodes (core BOUNDING_BOX, KJNodes PointsEditor)."""
    return {
        "bboxes": ("BOUNDING_BOX", {"forceInput": True,
                                    "tooltip": "Boxes from another node ({x, y, width, height}, a list, or one list "
                                               "per image), added to box_prompt."}),
        "positive_coords": ("STRING", {"forceInput": True,
                                       "tooltip": "Foreground points as JSON [{\"x\": .., \"y\": ..}] (KJNodes "
                                                  "PointsEditor), added to point_prompt."}),
        "negative_coords": ("STRING", {"forceInput": True,
                                       "tooltip": "Background points as JSON [{\"x\": .., \"y\": ..}] (KJNodes "
                                                  "PointsEditor), added to point_prompt."}),
    }
