"""SAM 2 / SAM 2.1 checkpoints load by their contents (keys and shapes), never by their names."""

import pytest
import torch

from comfyui_sam_kit.samkit import loader
from comfyui_sam_kit.samkit.loader import UnsupportedCheckpoint
from comfyui_sam_kit.samkit.sam2_config import IMAGE_PREFIXES, detect_sam2_config
from testsupport.sam2_checkpoints import build_meta_sam2, save_sam2_checkpoint, tiny_state_dict


@pytest.fixture(autouse=True)
def _fresh_cache():
    loader.clear_cache()
    yield
    loader.clear_cache()


def _image_part(state):
    return {k: v for k, v in state.items() if k.startswith(IMAGE_PREFIXES)}


@pytest.mark.parametrize("version,arch", [("2.1", "sam2.1_hiera_t"), ("2.0", "sam2_hiera_t")])
def test_renamed_official_format_loads_strictly(_isolated_model_dir, version, arch):
    state = tiny_state_dict(seed=1, version=version, spread=False)
    # named like a SAM 1 file: the loader must read the contents
    save_sam2_checkpoint(state, _isolated_model_dir / "sam_vit_b_01ec64_mine.pth")
    loaded = loader.load_model("sam_vit_b_01ec64_mine.pth", device="cpu")
    assert loaded.family == "sam2" and loaded.is_sam2 and loaded.arch == arch
    got = loaded.module.state_dict()
    want = _image_part(state)
    assert set(got) == set(want)  # every image tensor, and the video memory dropped
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_safetensors_under_any_extension_loads(_isolated_model_dir):
    state = tiny_state_dict(seed=1, version="2.1", spread=False)
    save_sam2_checkpoint(state, _isolated_model_dir / "weights.pth", safetensors=True)
    loaded = loader.load_model("weights.pth", device="cpu")
    assert loaded.arch == "sam2.1_hiera_t"
    key = "image_encoder.trunk.blocks.3.attn.qkv.weight"
    assert torch.equal(loaded.module.state_dict()[key], state[key])


@pytest.mark.parametrize("size,arch,stages", [("s", "sam2.1_hiera_s", (1, 2, 11, 2)), ("b+", "sam2.1_hiera_b+", (2, 3, 16, 3)),
                                              ("l", "sam2.1_hiera_l", (2, 6, 36, 4))])
def test_published_sizes_are_read_from_shapes(size, arch, stages):
    # Meta's own architecture on the meta device: shapes without the weights
    state = build_meta_sam2(size, "2.1", device="meta").state_dict()
    config = detect_sam2_config(state)
    assert config.arch == arch and config.stages == stages
    # b+ alone has a 14x14 background position embedding (Meta's Hiera default)
    assert config.window_pos_embed_bkg_spatial_size == ((14, 14) if size == "b+" else (7, 7))


def test_partial_and_unknown_sam2_files_are_named(_isolated_model_dir):
    state = dict(tiny_state_dict(seed=1, version="2.1", spread=False))
    partial = {k: v for k, v in state.items() if not k.startswith("sam_mask_decoder.conv_s0")}
    save_sam2_checkpoint(partial, _isolated_model_dir / "partial.pt")
    with pytest.raises(UnsupportedCheckpoint, match="partial.pt has SAM 2 keys but is not a complete SAM 2 checkpoint"):
        loader.load_model("partial.pt", device="cpu")
    # one block less in stage 3: a Hiera nobody published
    fewer = {k: v for k, v in state.items() if not k.startswith("image_encoder.trunk.blocks.9.")}
    fewer = {k.replace("trunk.blocks.10.", "trunk.blocks.9.").replace("trunk.blocks.11.", "trunk.blocks.10."): v
             for k, v in fewer.items()}
    save_sam2_checkpoint(fewer, _isolated_model_dir / "odd.pt")
    with pytest.raises(UnsupportedCheckpoint, match=r"Hiera size SAM Kit does not know \(embed_dim 96, stage depths \[1, 2, 6, 2\]\)"):
        loader.load_model("odd.pt", device="cpu")
    extra = {**state, "hq_head.weight": torch.zeros(2)}
    save_sam2_checkpoint(extra, _isolated_model_dir / "extra.pt")
    with pytest.raises(UnsupportedCheckpoint, match="tensors SAM 2 does not have \\(hq_head.weight\\)"):
        loader.load_model("extra.pt", device="cpu")


def test_bf16_keeps_the_policy_fp32_parts(_isolated_model_dir):
    save_sam2_checkpoint(tiny_state_dict(seed=1, version="2.1", spread=False), _isolated_model_dir / "t.pt")
    loaded = loader.load_model("t.pt", device="cpu", precision="bf16")
    model = loaded.module
    assert loaded.dtype == torch.bfloat16
    assert model.image_encoder.trunk.patch_embed.proj.weight.dtype == torch.bfloat16
    assert model.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.sam_mask_decoder.iou_prediction_head.parameters())
    assert model.pixel_mean.dtype == torch.float32
