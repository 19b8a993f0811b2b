"""The shared-image point decoder against segment-anything's own MaskDecoder, same weights."""

import pytest
import torch

from comfyui_sam_kit.samkit import point_decoder
from comfyui_sam_kit.samkit.point_decoder import decode_point_tokens, masks_for, share_image, supports_shared_decoding
from testsupport.checkpoints import build_small_sam
from testsupport.trained import build_trained_sam


def _library(sam, embedding, sparse):
    """MaskDecoder.forward exactly as SamPredictor / SamAutomaticMaskGenerator call it."""
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
        sparse.shape[0], -1, *embedding.shape[-2:])
    with torch.inference_mode():
        return sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                multimask_output=True)


def _inputs(sam, n=12, seed=0, kind="points"):
    gen = torch.Generator().manual_seed(seed)
    size = sam.image_encoder.img_size
    embedding = torch.randn(1, sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size, generator=gen)
    with torch.inference_mode():
        if kind == "points":
            coords = torch.rand(n, 1, 2, generator=gen) * size
            sparse, _ = sam.prompt_encoder(points=(coords, torch.ones(n, 1, dtype=torch.int)), boxes=None, masks=None)
        elif kind == "pos_neg":
            coords = torch.rand(n, 2, 2, generator=gen) * size
            labels = torch.tensor([[1, 0]] * n)
            sparse, _ = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        else:
            corner = torch.rand(n, 2, generator=gen) * size / 2
            boxes = torch.cat([corner, corner + size / 3], dim=1)
            sparse, _ = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    return embedding, sparse


@pytest.fixture(scope="module")
def trained():
    return build_trained_sam()


@pytest.fixture(scope="module")
def small():
    return build_small_sam(seed=3).eval()


def _all_pairs(n, m=3):
    return torch.arange(n).repeat_interleave(m), torch.arange(m).repeat(n)


@pytest.mark.parametrize("kind", ["points", "pos_neg", "box"])
@pytest.mark.parametrize("which", ["trained", "small"])
def test_logits_and_scores_match_the_library_decoder(which, kind, request):
    sam = request.getfixturevalue(which)
    assert supports_shared_decoding(sam.mask_decoder)
    embedding, sparse = _inputs(sam, kind=kind)
    ref_masks, ref_iou = _library(sam, embedding, sparse)
    tokens = decode_point_tokens(sam, embedding, sparse)
    prompts, outputs = _all_pairs(len(sparse))
    ours = masks_for(sam, tokens, prompts, outputs).view_as(ref_masks)
    scale = float(ref_masks.abs().max())
    assert scale > 0
    assert torch.allclose(tokens.iou_pred, ref_iou, atol=1e-5)
    assert float((ours - ref_masks).abs().max()) <= 1e-5 * max(scale, 1.0)
    # and the same pixels on either side of SAM's threshold
    assert float(((ours > 0) != (ref_masks > 0)).float().mean()) < 1e-4


def test_any_selection_of_masks_in_any_order_across_chunks(trained, monkeypatch):
    monkeypatch.setattr(point_decoder, "UPSCALE_CHUNK", 3)  # several chunks for 10 distinct prompts
    embedding, sparse = _inputs(trained, n=10, seed=1)
    ref_masks, _ = _library(trained, embedding, sparse)
    prompts = torch.tensor([9, 0, 4, 4, 7, 1, 9, 2, 3, 8, 5, 6])
    outputs = torch.tensor([2, 0, 1, 1, 0, 2, 0, 1, 2, 0, 1, 2])
    ours = masks_for(trained, decode_point_tokens(trained, embedding, sparse), prompts, outputs)
    assert ours.shape == (12, *ref_masks.shape[-2:])
    assert torch.allclose(ours, ref_masks[prompts, outputs], atol=1e-4)


def test_selecting_nothing_makes_no_masks(trained):
    embedding, sparse = _inputs(trained, n=4)
    empty = torch.zeros(0, dtype=torch.long)
    masks = masks_for(trained, decode_point_tokens(trained, embedding, sparse), empty, empty)
    assert masks.shape == (0, 64, 64)


def test_a_modified_upscaler_is_run_as_the_module_it_is(small):
    # a ReLU where segment-anything has GELU: the channels-last fast path must not be used
    sam = build_small_sam(seed=3).eval()
    sam.mask_decoder.output_upscaling[2] = torch.nn.ReLU()
    assert not point_decoder._is_standard_upscaler(sam.mask_decoder.output_upscaling)
    embedding, sparse = _inputs(sam)
    ref_masks, _ = _library(sam, embedding, sparse)
    ours = masks_for(sam, decode_point_tokens(sam, embedding, sparse), *_all_pairs(len(sparse))).view_as(ref_masks)
    assert torch.allclose(ours, ref_masks, atol=1e-5)
    standard = masks_for(small, decode_point_tokens(small, embedding, sparse), *_all_pairs(len(sparse)))
    assert not torch.allclose(standard.view_as(ref_masks), ref_masks, atol=1e-3), "the ReLU must change the masks"


def test_an_unknown_decoder_class_falls_back_to_calling_it(small):
    from segment_anything.modeling import MaskDecoder

    class PatchedDecoder(MaskDecoder):
        pass

    sam = build_small_sam(seed=3).eval()
    patched = PatchedDecoder(transformer=sam.mask_decoder.transformer, transformer_dim=256, num_multimask_outputs=3,
                             iou_head_depth=3, iou_head_hidden_dim=64)
    patched.load_state_dict(sam.mask_decoder.state_dict())
    sam.mask_decoder = patched.eval()
    assert not supports_shared_decoding(sam.mask_decoder)
    embedding, sparse = _inputs(sam)
    assert share_image(sam, embedding) is None  # nothing to share with a decoder we call as it is
    ref_masks, ref_iou = _library(small, embedding, sparse)
    tokens = decode_point_tokens(sam, embedding, sparse)
    assert tokens.keys is None and tokens.low_res is not None
    ours = masks_for(sam, tokens, *_all_pairs(len(sparse))).view_as(ref_masks)
    assert torch.allclose(tokens.iou_pred, ref_iou, atol=1e-6)
    assert torch.allclose(ours, ref_masks, atol=1e-6)
