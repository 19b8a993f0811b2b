"""SAM's input resize for images of any size, 1x1 included.

segment-anything's ``ResizeLongestSide`` scales the longest side to the encoder's size (1024 for
SAM, 256 for small test models) and rounds the other side, which becomes 0 for strips thinner
than half a pixel at that scale (1x640 at 256, 1x3000 at 1024); Pillow then refuses to resize
("height and width must be > 0") deep inside ``apply_image``. :class:`SamResize` is the same
transform with every side at least 1 pixel:

* ``get_preprocess_shape(h, w, n)`` is ``ResizeLongestSide``'s, then each side ``max(side, 1)``:
  identical wherever the reference gives no 0 side (tested over all sizes up to 300 and samples
  beyond), so every other image is encoded exactly as ``SamPredictor.set_image`` does;
* ``apply_image``, ``apply_coords``, ``apply_boxes`` are the reference methods (inherited), so
  prompts and the mask post-processing (``Sam.postprocess_masks`` with the resized
  ``input_size``) stay consistent with the resized image: a 1-pixel strip's prompt row maps onto
  the one row the encoder sees, and masks come back at the input's size.
"""

from __future__ import annotations

from segment_anything.utils.transforms import ResizeLongestSide


class SamResize(ResizeLongestSide):
    """``ResizeLongestSide`` (segment-anything) that never shrinks a side to 0 pixels."""

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        newh, neww = ResizeLongestSide.get_preprocess_shape(oldh, oldw, long_side_length)
        return max(newh, 1), max(neww, 1)


def sam_resize(sam) -> SamResize:
    """The resize transform for ``sam``'s encoder (``sam.image_encoder.img_size`` on the long side)."""
    return SamResize(sam.image_encoder.img_size)
