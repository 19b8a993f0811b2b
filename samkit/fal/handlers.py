"""Job handlers that bind the library to fal's endpoints: ``fal-ai/tiny-sam`` runs
``samkit.tiny_sam_job.segment_with_prompts`` and ``fal-ai/image-preprocessors/sam`` runs
``samkit.segmap.segmentation_map``, the same code as the local nodes. A handler is
``(arguments, ctx: JobContext) -> IMAGE``; every way of serving them (:mod:`.server`, later a
fal App) runs them through :func:`.jobs.run_job`.
"""

from __future__ import annotations

import threading

from . import schemas
from .jobs import Handler, JobContext
from ..sampling_params import DEFAULT_SAMPLING


_model_locks: "dict[int, threading.Lock]" = {}
_model_locks_guard = threading.Lock()


def model_lock(model) -> threading.Lock:
    """One lock per loaded model: ultralytics' FastSAM keeps per-call state in its predictor, so
    a model never runs two jobs at once. Workers still overlap decoding, encoding and jobs on
    other models."""
    with _model_locks_guard:
        return _model_locks.setdefault(id(model.module), threading.Lock())


class _Locks:
    """The locks of every model a job uses, taken in one order (no two jobs wait on each other)."""

    def __init__(self, *models):
        self.locks = sorted({id(m.module): model_lock(m) for m in models if m is not None}.items())

    def __enter__(self):
        for _, lock in self.locks:
            lock.acquire()

    def __exit__(self, *exc):
        for _, lock in reversed(self.locks):
            lock.release()


def tiny_sam_handler(model, sampling: str = DEFAULT_SAMPLING, proposals=None) -> Handler:
    """``fal-ai/tiny-sam`` → ``samkit.tiny_sam_job.segment_with_prompts``; answers its combined image.

    ``sampling``: everything mode's prompts when a request has no prompt and gives no ``sampling``;
    ``proposals``: the FastSAM model object-aware sampling uses (the server's ``--proposal-model``).
    """
    from ..tiny_sam_job import TinySamRequest, segment_with_prompts

    lock = _Locks(model, proposals)

    def handle(arguments: dict, ctx: JobContext):
        a = schemas.with_tiny_sam_defaults(arguments)
        image = ctx.image()
        request = TinySamRequest(size=a["size"], confidence=a["confidence"], box_prompt=a["box_prompt"],
                                 point_prompt=a["point_prompt"], point_label=a["point_label"],
                                 sampling=arguments.get("sampling", sampling))
        ctx.log(f"Tiny SAM with {model.name} on a {image.shape[2]}x{image.shape[1]} image")
        with lock:
            result = segment_with_prompts(model, image, request, proposals=proposals)
        ctx.log(f"{result.counts[0]} object(s)")
        return result.image[0]

    return handle


def segmentation_map_handler(model, settings=None, seed: int = 0, sampling: str = DEFAULT_SAMPLING,
                             proposals=None) -> Handler:
    """``fal-ai/image-preprocessors/sam`` → ``samkit.segmap.segmentation_map``; answers the colour map.

    ``sampling``: the default when a request gives none; ``proposals``: the FastSAM model for
    object-aware sampling (the server's ``--proposal-model``).
    """
    from ..segmap import segmentation_map

    lock = _Locks(model, proposals)

    def handle(arguments: dict, ctx: JobContext):
        image = ctx.image()
        chosen = arguments.get("sampling", sampling)
        ctx.log(f"segmentation map with {model.name} ({chosen} sampling) on a {image.shape[2]}x{image.shape[1]} image")
        with lock:
            # the endpoint answers the map alone: the per-segment masks are never built
            result = segmentation_map(model, image, settings, seed, segment_masks=False, sampling=chosen,
                                      proposals=proposals)
        ctx.log(f"{result.counts[0]} segment(s)")
        return result.seg_map[0]

    return handle



def auto_segment_handler(model, settings=None, seed: int = 0) -> Handler:
    """``fal-ai/sam2/auto-segment``'s job → ``samkit.segmap.segmentation_map`` with the request's
    grid and thresholds over ``settings`` (the rest: NMS, crops, batch size); answers
    ``(combined_mask, [segment masks])``, uint8 ``[H,W]`` arrays (0/255), largest segment first.
    Used by the fal App (``app.py``); the self-hosted server does not serve this endpoint."""
    from dataclasses import replace

    import numpy as np

    from ..automask import AutoMaskSettings
    from ..segmap import segmentation_map

    lock = model_lock(model)
    base = settings or AutoMaskSettings()

    def handle(arguments: dict, ctx: JobContext):
        image = ctx.image()
        fields = ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "min_mask_region_area")
        job_settings = replace(base, **{k: arguments[k] for k in fields if k in arguments})
        ctx.log(f"auto-segment with {model.name} on a {image.shape[2]}x{image.shape[1]} image")
        with lock:
            result = segmentation_map(model, image, job_settings, seed, segment_masks=True)
        count = result.counts[0]
        ctx.log(f"{count} segment(s)")
        masks = [(m > 0.5).to("cpu").numpy().astype(np.uint8) * 255 for m in result.segments[:count]]
        return (result.coverage[0] > 0.5).to("cpu").numpy().astype(np.uint8) * 255, masks

    return handle
