"""The pack as a fal App (fal SDK ``fal``, pinned in ``tests/requirements.txt``): the self-hosted
server's jobs on fal's serverless GPUs, behind fal's own queue.

Deploy from the pack's folder (the entry file ``fal_app.py`` imports :class:`SamKitApp`)::

    fal deploy fal_app.py::SamKitApp --app-name samkit

Routes (``<owner>/<app>/<route>`` on ``queue.fal.run``; :data:`.schemas.APP_ROUTES`), each with
the schema of the fal endpoint it stands in for and the same handler the self-hosted server runs
(:mod:`.handlers` through :func:`.jobs.run_job`: one implementation, two hosts):

* ``/tiny-sam``: ``fal-ai/tiny-sam``'s input, ``{"image": Image}`` out;
* ``/segmentation-map``: ``fal-ai/image-preprocessors/sam``'s input, ``{"image": Image}`` out;
* ``/auto-segment``: ``fal-ai/sam2/auto-segment``'s input, ``{"combined_mask", "individual_masks"}``
  out: every segment as its own mask (the per-segment masks the seed endpoints lack).

Weights: ``setup()`` loads :attr:`SamKitApp.model_name` with the pack's loader, which downloads a
known model once through the pack's verified download (size and SHA-256 checked, moved into place
only when complete) into fal's persistent storage (``/data/comfyui-sam-kit/sams``, shared by every
runner of the account), so later cold starts find it there.

Outputs: on fal (``IS_ISOLATE_AGENT`` set by fal's runners) result images go to fal's CDN like any
fal endpoint's (``fal.toolkit.Image``, repository ``fal_v3``); anywhere else (a local run, the
tests) they are data URIs (the SDK's ``in_memory`` repository) with no fallback, so nothing is
uploaded. ``SAMKIT_FAL_APP_OUTPUTS=cdn`` or ``data-uri`` overrides that choice.
"""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path
from typing import Annotated, Any, ClassVar

import fal
from fastapi import HTTPException
from fal.toolkit import Image as FalImage
from fal.toolkit.image import ImageSize
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..automask import AutoMaskSettings
from ..tiny_sam_params import CONFIDENCE, NO_BOX, NO_LABEL, NO_POINT, SIZE
from . import schemas
from .handlers import auto_segment_handler, segmentation_map_handler, tiny_sam_handler
from .jobs import Job, JobFailed, ServerSettings, install_job_hooks, run_job
from .sam3_schemas import AUTO_SEGMENT_DEFAULTS
from .url_fetch import OutboundPolicy, OutboundRefused, fetch_bytes

#: fal's persistent storage, mounted on every runner of the account
PERSISTENT_DIR = Path("/data")
MODELS_SUBDIR = Path("comfyui-sam-kit") / "sams"


def _image_url(value: str) -> str:
    errors = schemas.check_image_url(value, ["image_url"])
    if errors:
        raise ValueError(errors[0]["msg"])
    return value


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")  # like schemas.py: a drifted field is a 422, not ignored
    image_url: str = Field(description="The image: an https URL or a data:image/...;base64 URI.")

    @field_validator("image_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _image_url(value)


class TinySamInput(_Input):
    """``fal-ai/tiny-sam``'s input (field names, defaults and ranges: ``schemas.TINY_SAM_DEFAULTS``)."""

    size: int = Field(SIZE.default, ge=SIZE.min, le=SIZE.max, description="Inference size.")
    confidence: float = Field(CONFIDENCE.default, ge=CONFIDENCE.min, le=CONFIDENCE.max,
                              description="Object confidence threshold.")
    box_prompt: list[Annotated[list[float], Field(min_length=4, max_length=4)]] = Field(
        default_factory=lambda: NO_BOX.value, description="Boxes [[x, y, width, height], ...] in pixels.")
    point_prompt: list[Annotated[list[float], Field(min_length=2, max_length=2)]] = Field(
        default_factory=lambda: NO_POINT.value, description="Points [[x, y], ...] in pixels.")
    point_label: list[Annotated[int, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: NO_LABEL.value, description="1 = foreground, 0 = background, one per point.")


class SegmentationMapInput(_Input):
    """``fal-ai/image-preprocessors/sam``'s input: the image only."""


class AutoSegmentInput(_Input):
    """``fal-ai/sam2/auto-segment``'s input (fal-js ``Sam2AutoSegmentInput``; defaults fal's)."""

    points_per_side: int = Field(AUTO_SEGMENT_DEFAULTS["points_per_side"], ge=1, le=128)
    pred_iou_thresh: float = Field(AUTO_SEGMENT_DEFAULTS["pred_iou_thresh"], ge=0.0, le=1.0)
    stability_score_thresh: float = Field(AUTO_SEGMENT_DEFAULTS["stability_score_thresh"], ge=0.0, le=1.0)
    min_mask_region_area: int = Field(AUTO_SEGMENT_DEFAULTS["min_mask_region_area"], ge=0)
    output_format: str = Field("png", pattern="^png$", description="png only: masks must stay exact.")
    sync_mode: bool = Field(False, description="Accepted for compatibility; local runs always answer data URIs.")


class ImageOutput(BaseModel):
    image: FalImage


class AutoSegmentOutput(BaseModel):
    combined_mask: FalImage
    individual_masks: list[FalImage]


def outputs_repository() -> str:
    """``fal_v3`` (fal's CDN) on fal's runners, else ``in_memory`` (data URIs, nothing uploaded)."""
    choice = os.environ.get("SAMKIT_FAL_APP_OUTPUTS", "").strip().lower()
    if choice in ("cdn", "data-uri"):
        return "fal_v3" if choice == "cdn" else "in_memory"
    return "fal_v3" if os.environ.get("IS_ISOLATE_AGENT") else "in_memory"


class SamKitApp(fal.App, name="samkit"):
    """The pack's jobs as a fal App; see the module docstring. Subclass to change the model or
    the seg map settings (class attributes), e.g. ``model_name = "sam_vit_h_4b8939.pth"``."""

    machine_type = "GPU-A6000"  # 48 GB: every model the pack knows, SAM vit_h included
    num_gpus = 1
    keep_alive = 300
    requirements = [
        "torch==2.14.1", "torchvision==0.29.1", "segment-anything==1.0", "ultralytics==8.4.190",
        "httpx==0.28.1", "safetensors==0.8.0", "aiohttp==3.14.5", "numpy==2.4.6", "pillow==13.0.0",
        "opencv-python==5.0.0.93",
    ]
    app_files = ["samkit"]  # the library, shipped with the app (fal_app.py sits next to it)

    model_name: ClassVar[str] = "mobile_sam.pt"
    device: ClassVar[str] = "auto"
    precision: ClassVar[str] = "auto"
    segmap_settings: ClassVar[AutoMaskSettings] = AutoMaskSettings()
    #: https image_url: any host, but the self-hosted server's address rules (url_fetch.py): no
    #: private, loopback or link-local address, each redirect checked, size and time capped
    image_fetch: ClassVar[OutboundPolicy] = OutboundPolicy(any_host=True)

    def setup(self) -> None:
        if PERSISTENT_DIR.is_dir() and "SAMKIT_MODELS_DIR" not in os.environ:
            os.environ["SAMKIT_MODELS_DIR"] = str(PERSISTENT_DIR / MODELS_SUBDIR)  # downloaded once per account
        from ..loader import load_model

        install_job_hooks()
        model = load_model(self.model_name, self.device, self.precision)
        self.handlers = {schemas.TINY_SAM: tiny_sam_handler(model),
                         schemas.SEGMENTATION_MAP: segmentation_map_handler(model, self.segmap_settings),
                         schemas.SAM2_AUTO_SEGMENT: auto_segment_handler(model, self.segmap_settings)}
        self.settings = ServerSettings(require_key=False)  # fal's gateway checks the caller's key
        self.repository = outputs_repository()

    # ------------------------------------------------------------------ plumbing

    def _arguments(self, body: _Input) -> dict:
        """The request as the handlers take it: an https image is fetched under ``image_fetch``
        and passed on as a data URI, so the handlers read one kind of input."""
        arguments = body.model_dump()
        url = arguments["image_url"]
        if url.startswith("https://"):
            try:
                data = fetch_bytes(url, self.image_fetch, "image_url")
            except OutboundRefused as exc:
                raise HTTPException(422, [{"loc": ["body", "image_url"], "msg": f"Could not load image: {exc}",
                                           "type": "value_error"}], headers={"x-fal-billable-units": "0"}) from None
            # the decoder reads the bytes' own format (images.decode_image_bytes); the label is only the URI's shape
            arguments["image_url"] = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        return arguments

    def _run(self, endpoint_id: str, body: _Input, handler) -> tuple[bytes, int, int]:
        request = self.current_request
        job = Job(id=(request.request_id if request and request.request_id else uuid.uuid4().hex),
                  app=schemas.AppId.parse(endpoint_id), endpoint_id=endpoint_id, arguments=self._arguments(body))
        try:
            return run_job(job, handler, self.settings)
        except JobFailed as failed:
            detail: Any = failed.body["detail"] if failed.body else failed.message
            headers = {"x-fal-billable-units": "0"} if failed.status < 500 else None
            raise HTTPException(failed.status, detail, headers=headers) from None

    def _image(self, png: bytes, width: int, height: int, name: str) -> FalImage:
        return FalImage.from_bytes(png, "png", ImageSize(width=width, height=height), file_name=name,
                                   repository=self.repository, fallback_repository=None)

    # ------------------------------------------------------------------ endpoints

    @fal.endpoint("/" + schemas.APP_ROUTES[schemas.TINY_SAM])
    def tiny_sam(self, input: TinySamInput) -> ImageOutput:
        png, w, h = self._run(schemas.TINY_SAM, input, self.handlers[schemas.TINY_SAM])
        return ImageOutput(image=self._image(png, w, h, "tiny_sam.png"))

    @fal.endpoint("/" + schemas.APP_ROUTES[schemas.SEGMENTATION_MAP])
    def segmentation_map(self, input: SegmentationMapInput) -> ImageOutput:
        png, w, h = self._run(schemas.SEGMENTATION_MAP, input, self.handlers[schemas.SEGMENTATION_MAP])
        return ImageOutput(image=self._image(png, w, h, "seg_map.png"))

    @fal.endpoint("/" + schemas.APP_ROUTES[schemas.SAM2_AUTO_SEGMENT])
    def auto_segment(self, input: AutoSegmentInput) -> AutoSegmentOutput:
        segments: list = []
        handler = self.handlers[schemas.SAM2_AUTO_SEGMENT]

        def combined_only(arguments: dict, ctx):  # run_job answers one image; the segments ride alongside
            combined, masks = handler(arguments, ctx)
            segments.extend(masks)
            return combined

        from ..images import png_bytes

        png, w, h = self._run(schemas.SAM2_AUTO_SEGMENT, input, combined_only)
        masks = [self._image(png_bytes(m), w, h, f"mask_{i}.png") for i, m in enumerate(segments)]
        return AutoSegmentOutput(combined_mask=self._image(png, w, h, "combined_mask.png"), individual_masks=masks)


def build_local_app(app_class: type = SamKitApp):
    """The FastAPI app ``fal`` builds for ``app_class`` (``BaseServable._build_app``), for serving
    with uvicorn on this machine (``setup()`` runs in its lifespan); nothing is deployed."""
    return app_class(_allow_init=True)._build_app()
