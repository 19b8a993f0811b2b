"""Everything mode's settings: segment-anything's ``SamAutomaticMaskGenerator`` arguments, with its
defaults, checked once (``validate``) before any model work. ``automask.py`` runs them."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class AutoMaskSettings:
    """segment-anything's everything-mode settings, with its defaults."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def validate(self) -> "AutoMaskSettings":
        for f in fields(self):
            if isinstance(getattr(self, f.name), bool):
                raise ValueError(f"{f.name} must be a number, not {getattr(self, f.name)!r}")
        checks = [
            (1 <= self.points_per_side <= 256, "points_per_side must be between 1 and 256"),
            (self.points_per_batch >= 1, "points_per_batch must be at least 1"),
            (0.0 <= self.pred_iou_thresh <= 1.0, "pred_iou_thresh must be between 0 and 1"),
            (0.0 <= self.stability_score_thresh <= 1.0, "stability_score_thresh must be between 0 and 1"),
            (0.0 <= self.box_nms_thresh <= 1.0, "box_nms_thresh must be between 0 and 1"),
            (0 <= self.crop_n_layers <= 4, "crop_n_layers must be between 0 and 4"),
            (0.0 <= self.crop_overlap_ratio < 1.0, "crop_overlap_ratio must be in [0, 1)"),
            (self.crop_n_points_downscale_factor >= 1, "crop_n_points_downscale_factor must be at least 1"),
            (self.min_mask_region_area >= 0, "min_mask_region_area must be 0 or more pixels"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self

    def reference_kwargs(self) -> dict:
        """Keyword arguments for ``SamAutomaticMaskGenerator`` with the same settings."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
