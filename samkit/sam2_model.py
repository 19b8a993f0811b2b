"""SAM 2 / SAM 2.1 for images: the image path of Meta's ``SAM2Base``, built from ultralytics' modules.

Why ultralytics' modules and not Meta's ``sam2`` package (README, "SAM 2.1"): ultralytics is
already the pack's dependency, and its ``Hiera``, ``FpnNeck``, ``PromptEncoder`` and
``SAM2MaskDecoder`` use Meta's parameter names, so the official checkpoints load strictly, as
they are. Meta's package initialises Hydra globally when imported (``sam2/__init__.py``), builds
its models from YAML configs, and its install tries to compile a CUDA extension; ultralytics'
own SAM 2 builder reads "is this 2.1" from the file *name*. Here the configuration comes from the
tensors (``sam2_config``) and the modules are built in Python.

:class:`Sam2Image` holds what images use: ``image_encoder`` (Hiera trunk + FPN neck, lowest
level dropped), ``sam_prompt_encoder``, ``sam_mask_decoder`` (with its high-resolution
``conv_s0``/``conv_s1``) and ``no_mem_embed``. The video memory's tensors (memory attention and
encoder, object pointers) are checked to be exactly those and then dropped: about 7.5 M of the
tiny model's 39 M parameters.

Pre- and post-processing follow ``sam2.SAM2ImagePredictor`` (``sam2/utils/transforms.py``): the
image is resized to 1024×1024 (no aspect ratio kept: torchvision ``Resize`` on the 0..1 tensor,
bilinear with antialiasing) and normalised with ImageNet's mean/std; prompts are scaled by
1024/width and 1024/height; low-resolution logits are resized to the image bilinearly
(``align_corners=False``) and thresholded at 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .embedding_cache import ImageEmbedding
from .model_errors import UnsupportedCheckpoint
from .sam2_config import IMAGE_PREFIXES, VIDEO_PREFIXES, Sam2Config

#: ``SAM2Transforms``' normalisation (0..1 pixels)
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)
#: what SAM2Base's sam_mask_decoder_extra_args set in Meta's build_sam2 (apply_postprocessing=True)
DYNAMIC_MULTIMASK = dict(dynamic_multimask_via_stability=True, dynamic_multimask_stability_delta=0.05,
                         dynamic_multimask_stability_thresh=0.98)


@dataclass(frozen=True)
class Sam2Embedding(ImageEmbedding):
    """SAM 2's image embedding: ``features`` ``[1,256,64,64]`` (``no_mem_embed`` added, as the
    image predictor does) plus ``high_res`` (``[1,32,256,256]``, ``[1,64,128,128]``: the neck's
    finer levels through the decoder's ``conv_s0``/``conv_s1``). ``input_size`` is the encoder's
    square (1024, 1024)."""

    high_res: tuple = ()

    @property
    def nbytes(self) -> int:
        return super().nbytes + sum(t.numel() * t.element_size() for t in self.high_res)

    def to(self, device: torch.device) -> "Sam2Embedding":
        if self.features.device == device:
            return self
        return Sam2Embedding(self.features.to(device), self.input_size, self.original_size,
                             tuple(t.to(device) for t in self.high_res))


class Sam2Image(torch.nn.Module):
    """SAM 2's image encoder, prompt encoder and mask decoder, under Meta's parameter names."""

    mask_threshold = 0.0

    def __init__(self, config: Sam2Config):
        super().__init__()
        from ultralytics.models.sam.modules.decoders import SAM2MaskDecoder
        from ultralytics.models.sam.modules.encoders import FpnNeck, Hiera, ImageEncoder, PromptEncoder
        from ultralytics.models.sam.modules.blocks import SAM2TwoWayTransformer

        self.config = config
        self.image_size = 1024
        size = config.size
        self.image_encoder = ImageEncoder(
            trunk=Hiera(embed_dim=config.embed_dim, num_heads=size.num_heads, stages=config.stages,
                        global_att_blocks=size.global_att_blocks, window_spec=size.window_spec,
                        window_pos_embed_bkg_spatial_size=config.window_pos_embed_bkg_spatial_size),
            neck=FpnNeck(d_model=config.d_model, backbone_channel_list=list(config.backbone_channel_list),
                         fpn_top_down_levels=[2, 3], fpn_interp_model="nearest"),
            scalp=1,
        )
        dim = config.d_model
        grid = self.image_size // 16
        self.sam_prompt_encoder = PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                                input_image_size=(self.image_size, self.image_size), mask_in_chans=16)
        self.sam_mask_decoder = SAM2MaskDecoder(
            num_multimask_outputs=3,
            transformer=SAM2TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=2048, num_heads=8),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=256, use_high_res_features=True,
            iou_prediction_use_sigmoid=True, pred_obj_scores=True, pred_obj_scores_mlp=config.pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=True, **DYNAMIC_MULTIMASK,
        )
        self.no_mem_embed = torch.nn.Parameter(torch.zeros(1, 1, dim))
        # fp32 ImageNet constants, applied to 0..1 pixels (``SAM2Transforms``)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    @property
    def arch(self) -> str:
        return self.config.arch

    @torch.inference_mode()
    def encode_image(self, image: np.ndarray) -> Sam2Embedding:
        """Encode one RGB uint8 ``[H,W,3]`` image as ``SAM2ImagePredictor.set_image`` does.

        Pixels are resized and normalised in fp32, then handed to the encoder in its dtype; runs in
        the caller's precision policy (``precision.for_model``).
        """
        from torchvision.transforms.functional import resize

        device = self.pixel_mean.device
        dtype = self.image_encoder.trunk.patch_embed.proj.weight.dtype
        pixels = torch.as_tensor(np.ascontiguousarray(image), device=device).permute(2, 0, 1).float() / 255.0
        pixels = resize(pixels, [self.image_size, self.image_size])  # bilinear, antialiased: torchvision's Resize
        pixels = ((pixels - self.pixel_mean) / self.pixel_std)[None]
        fpn = self.image_encoder(pixels.to(dtype))["backbone_fpn"]  # 256², 128², 64² (scalp dropped 32²)
        high_res = (self.sam_mask_decoder.conv_s0(fpn[0]), self.sam_mask_decoder.conv_s1(fpn[1]))
        # ``_prepare_backbone_features`` flattens to [HW, 1, C] and the predictor adds no_mem_embed there
        features = fpn[2] + self.no_mem_embed.to(fpn[2].dtype).view(1, -1, 1, 1)
        return Sam2Embedding(features, (self.image_size, self.image_size), tuple(image.shape[:2]), high_res)

    def upsample_logits(self, low_res: torch.Tensor, original_size: tuple) -> torch.Tensor:
        """``[K,h,w]`` low-resolution logits → fp32 ``[K,H,W]`` at ``original_size``
        (``SAM2Transforms.postprocess_masks``: bilinear, ``align_corners=False``)."""
        return F.interpolate(low_res[:, None].float(), tuple(original_size), mode="bilinear", align_corners=False)[:, 0]


def to_encoder_frame(xy: torch.Tensor, original_size: tuple, resolution: int) -> torch.Tensor:
    """Pixel coordinates ``[..., 2]`` (x, y) → the encoder's square frame, as ``SAM2Transforms.transform_coords``
    (normalize=True): float32 x/W and y/H, then × ``resolution``."""
    h, w = original_size
    xy = xy.clone()
    xy[..., 0] = xy[..., 0] / w
    xy[..., 1] = xy[..., 1] / h
    return xy * resolution


def decode_low_res(net: Sam2Image, embedding: Sam2Embedding, coords: torch.Tensor, labels: torch.Tensor,
                   multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM 2's decoder for B prompts on one image: low-resolution logits ``[B,M,256,256]`` and
    predicted IoU ``[B,M]`` (M = 3 with ``multimask``, else 1), as ``SAM2ImagePredictor._predict``."""
    sparse, dense = net.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    low_res, iou, _, _ = net.sam_mask_decoder(
        image_embeddings=embedding.features,
        image_pe=net.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=coords.shape[0] > 1,
        high_res_features=list(embedding.high_res),
    )
    return low_res, iou


def build_sam2(config: Sam2Config) -> Sam2Image:
    """SAM 2's image path for ``config`` (random weights, eval mode); the loader loads the state."""
    return Sam2Image(config).eval()


def load_sam2(state: dict, config: Sam2Config, name: str) -> Sam2Image:
    """A :class:`Sam2Image` with ``state``'s image-path tensors, loaded strictly.

    Every other key must belong to SAM 2's video memory (``sam2_config.VIDEO_PREFIXES``), which is
    dropped; anything else raises :class:`UnsupportedCheckpoint` naming ``name``.
    """
    image = {k: v for k, v in state.items() if k.startswith(IMAGE_PREFIXES)}
    foreign = sorted(k for k in state if k not in image and not k.startswith(VIDEO_PREFIXES))
    if foreign:
        looks = (f"looks like a {config.arch} checkpoint but has tensors SAM 2 does not have "
                 f"({', '.join(foreign[:4])}{' …' if len(foreign) > 4 else ''})")
        raise UnsupportedCheckpoint(f"{name} {looks}", looks)
    model = build_sam2(config)
    try:
        model.load_state_dict(image, strict=True)
    except RuntimeError as exc:
        looks = (f"looks like a {config.arch} checkpoint but its tensors do not fit that architecture "
                 f"({' '.join(str(exc).split())[:300]})")
        raise UnsupportedCheckpoint(f"{name} {looks}", looks) from None
    return model
