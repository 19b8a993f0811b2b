"""SAM 2.1 checkpoints for the tests, built once per session (tools/sam2_synthetic.py builds them).

Building the tiny model takes ~2 s and its state dict is 156 MB, so each (seed, version) is
built once per test session.
"""

from __future__ import annotations

import functools

from sam2_synthetic import build_meta_sam2, calibrate_for_everything, meta_model_from, save_sam2_checkpoint, spread_decoder

__all__ = ["build_meta_sam2", "everything_state_dict", "meta_model_from", "save_sam2_checkpoint", "tiny_state_dict"]


@functools.lru_cache(maxsize=4)
def tiny_state_dict(seed: int = 0, version: str = "2.1", spread: bool = True) -> dict:
    """The state dict of a (spread) random SAM ``version`` hiera-tiny."""
    model = build_meta_sam2("t", version, seed)
    if spread:
        spread_decoder(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=4)
def everything_state_dict(seed: int = 0) -> dict:
    """A calibrated (``calibrate_for_everything``) random SAM 2.1 hiera-tiny."""
    model = calibrate_for_everything(build_meta_sam2("t", "2.1", seed))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
