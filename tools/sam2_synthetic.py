"""SAM 2 / SAM 2.1 checkpoints of the real architectures, built by Meta's own ``sam2`` package.

``build_meta_sam2(size, version, seed)`` instantiates Meta's ``SAM2Base`` from Meta's YAML
config (``configs/sam2.1/sam2.1_hiera_t.yaml`` and the like: the architecture of the published
files, with Meta's parameter names) with seeded random weights, as ``sam2.build_sam.build_sam2``
does (same decoder post-processing flags). ``save_sam2_checkpoint`` writes ``{"model":
state_dict}``, the format of ``sam2.1_hiera_tiny.pt``; ``safetensors=True`` writes the bare
state dict as safetensors.

Random weights give noise-like masks that no threshold lets through, so ``spread_decoder``
scales the decoder's hypernetwork outputs (logits far from 0, so masks have area) and lifts the
predicted IoU; the fidelity tests then compare real masks, not empty ones.

``calibrate_for_everything`` goes further for everything mode (stable masks, some predicted IoUs
below SAM 2's threshold). Shared by the tests (tests/testsupport/sam2_checkpoints.py caches the
state dicts per session) and the benchmark (bench/sam2_compare.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

CONFIGS = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}


def _compose(size: str, version: str):
    from hydra import compose
    from omegaconf import OmegaConf

    import sam2  # noqa: F401  (initialises Hydra's config module, as Meta's build_sam2 relies on)

    folder = "sam2.1" if version == "2.1" else "sam2"
    overrides = ["++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
                 "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
                 "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98"]
    cfg = compose(config_name=f"configs/{folder}/{folder}_hiera_{size}.yaml", overrides=overrides)
    OmegaConf.resolve(cfg)
    return cfg


def build_meta_sam2(size: str = "t", version: str = "2.1", seed: int = 0, device: str = "cpu"):
    """Meta's ``SAM2Base`` for hiera ``size`` (t / s / b+ / l), SAM ``version`` 2.0 or 2.1, in eval mode.
    ``device="meta"`` gives the shapes without the weights (for the large sizes)."""
    from hydra.utils import instantiate

    cfg = _compose(size, version)
    torch.manual_seed(seed)
    linspace = torch.linspace
    if device == "meta":  # Hiera reads its drop-path rates with .item(): those few numbers stay real
        torch.linspace = lambda *a, **k: linspace(*a, **{**k, "device": "cpu"})
    try:
        with torch.device(device):
            model = instantiate(cfg.model, _recursive_=True)
    finally:
        torch.linspace = linspace
    return model.eval()


@torch.no_grad()
def spread_decoder(model, gain: float = 40.0, iou_shift: float = 2.0):
    """Make a random SAM 2's masks non-trivial: hypernetwork outputs × ``gain``, predicted IoU
    logits + ``iou_shift`` (sigmoid: ~0.9 instead of ~0.5). Returns ``model``."""
    decoder = model.sam_mask_decoder
    for mlp in decoder.output_hypernetworks_mlps:
        mlp.layers[-1].weight.mul_(gain)
    decoder.iou_prediction_head.layers[-1].bias.add_(iou_shift)
    return model


@torch.no_grad()
def calibrate_for_everything(model, gain: float = 1000.0, iou_shift: float = 1.4):
    """Make a random SAM 2 give stable, varied masks, so everything mode's filters keep some.

    Random decoders make masks that are checkerboards (the upscaler's four taps differ) or a
    near-constant sign (stability far below 0.95: nothing survives). Here the upscaler's taps are
    made equal, the masks read the finest image features alone (``conv_s0``, ×5; the second
    transposed convolution's weights zeroed), the hypernetwork outputs are scaled by ``gain`` (few
    logits within ±1 of the threshold: stability up), and the predicted-IoU logits shifted so some
    outputs pass SAM 2's 0.8 and some do not. Measured on the 150x200 test image, 8x8 points: 192
    candidates, 128 pass predicted IoU, all of those stable, 1 segment after box NMS at 0.7 (the
    masks overlap: the untrained prompt path varies them little).
    """
    decoder = model.sam_mask_decoder
    for conv in (decoder.output_upscaling[0], decoder.output_upscaling[3]):
        conv.weight.copy_(conv.weight.mean(dim=(2, 3), keepdim=True).expand_as(conv.weight))
    decoder.output_upscaling[3].weight.zero_()
    decoder.conv_s0.weight.mul_(5.0)
    for mlp in decoder.output_hypernetworks_mlps:
        mlp.layers[-1].weight.mul_(gain)
    decoder.iou_prediction_head.layers[-1].bias.add_(iou_shift)
    return model


def meta_model_from(state: dict, size: str = "t", version: str = "2.1"):
    """Meta's ``SAM2Base`` holding ``state`` (the reference the fidelity tests run)."""
    model = build_meta_sam2(size, version)
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_sam2_checkpoint(state: dict, path: Path, safetensors: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if safetensors:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state}, path)
    return path
