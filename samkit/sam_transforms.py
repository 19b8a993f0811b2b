"""SAM's image input: the resize for images of any size (1x1 included), and the one ``encode_image``.

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

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from .embedding_cache import ImageEmbedding


class SamResize(ResizeLongestSide):
    """``ResizeLongestSide`` (segment-anything) that never shrinks a side to 0 pixels."""

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        newh, neww = ResizeLongestSide.get_preprocess_shape(oldh, oldw, long_side_length)
        return max(newh, 1), max(neww, 1)


def sam_resize(sam) -> SamResize:
    """The resize transform for ``sam``'s encoder (``sam.image_encoder.img_size`` on the long side)."""
    return SamResize(sam.image_encoder.img_size)


@torch.inference_mode()
def encode_image(sam, image: np.ndarray) -> ImageEmbedding:
    """Encode one RGB uint8 ``[H,W,3]`` image exactly as ``SamPredictor.set_image`` does.

    Resizes the longest side to the encoder's size (:class:`SamResize`), normalises in fp32 as the
    reference does, then hands the encoder its own dtype, on the model's device. Runs in the
    caller's precision policy (``precision.for_model``, entered by the job). Every path that
    encodes an image (everything mode per crop, prompts via the embedding cache) comes here.
    """
    device = next(sam.parameters()).device
    dtype = next(sam.image_encoder.parameters()).dtype
    resized = sam_resize(sam).apply_image(image)
    pixels = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None]
    input_size = tuple(pixels.shape[-2:])
    features = sam.image_encoder(sam.preprocess(pixels.float()).to(dtype))
    return ImageEmbedding(features, input_size, tuple(image.shape[:2]))
