"""The SAM Segmentation Map job: segment everything in each image of a batch and paint it.

Memory: each image's segments are kept compact (``compact.py``: bit-packed boxes) until every
image's count is known; then the outputs' size is checked against the free memory of the output
device (``outputs.ensure_fits``: fail at once, with the numbers and what to change), the outputs
are allocated once, and filled mask by mask. Peak memory is the outputs plus a bounded working
set (an image-sized label map and one mask), where a tensor pipeline held several full-size
copies of every mask (bool, sorted, float32, concatenated).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from . import outputs, precision, runtime
from .automask import AutoMaskSettings, generate_segments
from .automask_sampling import as_proposals, check as check_sampling
from .compact import CompactMasks
from .images import as_image_batch, to_uint8_rgb
from .loaded_model import LoadedModel
from .painting import colour_labels, order_by_area, palette
from .sampling_params import DEFAULT_SAMPLING, check_sampling as check_sampling_value

log = logging.getLogger(__name__)


@dataclass
class SegMapResult:
    #: colour map ``[B,H,W,3]`` float32, every segment painted (largest first, smaller on top)
    seg_map: torch.Tensor
    #: float32 ``[N,H,W]``, the rule of ``outputs.py``: each image's segments largest first (at
    #: most ``max_segments`` of them), image after image; an image with none gives one empty mask.
    #: None when ``segment_masks=False``.
    segments: torch.Tensor | None
    #: union of each image's segments ``[B,H,W]`` float32
    coverage: torch.Tensor
    #: segments of each image in ``segments`` (image i's rows: ``outputs.mask_rows(counts)``)
    counts: list[int]
    #: segments each image had before ``max_segments`` (equal to ``counts`` when nothing was capped)
    found: list[int]


def _segments_of(model: LoadedModel, image_u8, settings: AutoMaskSettings, sampling: str, proposals) -> CompactMasks:
    """Compact masks of one image, in the model's order."""
    if model.is_sam:
        return generate_segments(model.runner, image_u8, settings, sampling=sampling, proposals=proposals).compact
    if model.is_sam2:
        from .sam2_backend import Sam2Backend  # SAM 2 / 2.1 through the same driver

        return generate_segments(Sam2Backend(model.runner), image_u8, settings, sampling=sampling,
                                 proposals=proposals).compact
    if model.is_fastsam:
        from .fastsam import segment_everything  # FastSAM's own everything mode

        return CompactMasks.from_dense(segment_everything(model, image_u8))
    raise ValueError(f"model family {model.family!r} cannot segment everything")


_OUTPUTS = outputs.BatchOutputs("SAM Segmentation Map", "segments", "segments", "seg_map and coverage", 4)


def _ensure_fits(counts: list[int], pending: int, h: int, w: int, max_segments: int, segment_masks: bool,
                 device: torch.device) -> None:
    capped = [min(c, max_segments) if max_segments else c for c in counts]

    def remedies(free: int) -> list[str]:
        found = counts + [1] * pending

        def fits(cap: int) -> bool:
            return _OUTPUTS.bytes_needed([min(c, cap) for c in found], h, w) <= free

        fixes = []
        if segment_masks and fits(1):  # name the largest per-image cap that fits
            lo, hi = 1, max(found)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
            fixes.append(f"set max_segments to {lo} or less (keeps each image's largest segments)")
        if segment_masks:
            fixes.append("raise min_mask_region_area, pred_iou_thresh or stability_score_thresh so fewer segments survive")
        fixes.append("segment a smaller image" + (" or fewer images at once" if len(found) > 1 else ""))
        return fixes

    _OUTPUTS.ensure_fits(capped, pending, h, w, device, remedies, with_masks=segment_masks)


def segmentation_map(
    model: LoadedModel, image: torch.Tensor, settings: AutoMaskSettings | None = None, seed: int = 0,
    max_segments: int = 0, segment_masks: bool = True, sampling: str = DEFAULT_SAMPLING, proposals=None,
) -> SegMapResult:
    """Segment everything in each image of ``image`` (IMAGE ``[B,H,W,C]``) and paint it.

    ``sampling`` (``sampling_params.SAMPLING``) chooses the SAM family's prompts: ``grid``,
    ``hierarchical`` or ``object-aware`` (SAM and SAM 2), which takes its boxes from ``proposals`` (a FastSAM
    ``LoadedModel``, or a function crop RGB -> xyxy boxes; ``automask_sampling``). FastSAM models
    run their own everything mode and ignore both.

    ``max_segments`` (0 = no limit) keeps only each image's largest segments in ``segments``; the
    map and coverage still show every segment. ``segment_masks=False`` skips the ``segments``
    output (the command line without ``--masks``). Raises ``ValueError`` for bad inputs and
    ``outputs.OutputTooLarge`` when the outputs would not fit in the output device's free memory.
    """
    settings = (settings or AutoMaskSettings()).validate()
    if model.samples_prompts:
        check_sampling(sampling, proposals)
    else:
        check_sampling_value(sampling)  # a bad value is refused whatever the model
    proposal_model = proposals if model.samples_prompts and getattr(proposals, "is_fastsam", False) else None
    proposals = as_proposals(proposals) if model.samples_prompts else None  # a SAM model as proposer: refused here
    if isinstance(max_segments, bool) or not isinstance(max_segments, int) or max_segments < 0:
        raise ValueError(f"max_segments must be a whole number, 0 (no limit) or more, got {max_segments!r}")
    batch = as_image_batch(image)
    b, h, w, _ = batch.shape
    out = runtime.output_device()
    # even one segment per image may not fit: say so before any model work
    _ensure_fits([], b, h, w, max_segments, segment_masks, out)
    runtime.prepare_model(model)
    if proposal_model is not None:
        runtime.prepare_model(proposal_model)

    stores: list[CompactMasks] = []
    for i in range(b):
        runtime.check_interrupt()
        with precision.for_model(model):  # model work only: painting below stays exact fp32
            found = _segments_of(model, to_uint8_rgb(batch[i]), settings, sampling, proposals)
        stores.append(found[order_by_area(found.areas)])
        del found
        if i + 1 < b:  # fail as soon as the images so far are too many
            _ensure_fits([len(s) for s in stores], b - i - 1, h, w, max_segments, segment_masks, out)
    found_counts = [len(s) for s in stores]
    counts = [min(c, max_segments) if max_segments else c for c in found_counts]
    _ensure_fits(found_counts, 0, h, w, max_segments, segment_masks, out)
    if counts != found_counts:
        capped = ", ".join(f"image {i + 1}: {k} of {n}" for i, (k, n) in enumerate(zip(counts, found_counts)) if k < n)
        message = f"max_segments = {max_segments}: kept the largest segments only ({capped}); seg_map shows them all"
        log.warning(message)
        runtime.status_text(message)

    rows = outputs.mask_rows(counts)
    seg_map = torch.zeros((b, h, w, 3), dtype=torch.float32, device=out)
    coverage = torch.zeros((b, h, w), dtype=torch.float32, device=out)
    segments = torch.zeros((rows[-1], h, w), dtype=torch.float32, device=out) if segment_masks else None
    for i, store in enumerate(stores):
        runtime.check_interrupt()
        labels = store.label_map()  # stores are largest first: smaller segments end up on top
        seg_map[i].copy_(colour_labels(labels, palette(len(store), seed))).div_(255.0)
        coverage[i].copy_(torch.from_numpy(labels >= 0))
        del labels
        if segments is not None:
            store.write(segments[rows[i] : rows[i + 1]], range(counts[i]))
    return SegMapResult(seg_map=seg_map, segments=segments, coverage=coverage, counts=counts, found=found_counts)
