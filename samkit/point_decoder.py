"""SAM's mask decoder for many single-point prompts on one image, without its repeated work.

``MaskDecoder.predict_masks`` copies the image embedding and its positional encoding once per
prompt, projects those identical copies again for every prompt in the first two-way block, and
upsamples image features for every prompt before anyone has looked at the predicted IoU. In
everything mode (hundreds of prompts on one image, most of their masks thrown away by the
predicted-IoU filter) that is most of the time. Here:

* the first block's projections of the image side (keys, values, and the image-to-token
  queries) are computed once and broadcast over the prompts; the per-prompt image features only
  exist from that block's residual on;
* :func:`decode_point_tokens` stops after the transformer: predicted IoUs and mask tokens come
  out without a single mask, so the caller can filter first;
* :func:`masks_for` upsamples the features only of the prompts whose masks are wanted, in
  chunks, and takes only the wanted tokens' dot products;
* callers decode a few prompts at a time (:func:`prompts_per_chunk`): on a CPU, per-prompt
  image features in small blocks are served from reused heap memory, while big ones are fresh
  mappings that page-fault in, which cost as much as the arithmetic; :func:`share_image` makes
  the image's own inputs once for all those calls.

The maths is the library's, operation for operation and with the same weights (the tests check
the logits against ``MaskDecoder`` itself); only where the results are shared changes. Any decoder
that is not segment-anything's ``MaskDecoder``/``TwoWayTransformer`` falls back to calling it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import Attention, TwoWayTransformer

#: prompts whose image features are upsampled at once; None: sized by ``prompts_per_chunk``
UPSCALE_CHUNK: int | None = None

#: Byte budget of a chunk's largest per-prompt tensor on the CPU. glibc serves blocks under its
#: mmap ceiling (32 MiB) from a heap it reuses; a larger block is a fresh mapping whose pages
#: fault in on first touch, and on a CPU that costs about as much as the arithmetic on them.
#: Measured on a 768x1024 everything run (vit_t, 2 cores, about ±3 s between runs): 64-prompt
#: blocks 77 s; pieces of 24 / 16 / 8 / 4 MiB: 38 / 35 / 33 / 46 s (below 8 MiB the per-call
#: work on the prompt tokens stops amortising).
CPU_CHUNK_BYTES = 8 << 20
#: On accelerators the caching allocator reuses memory anyway; bigger chunks keep the kernels
#: busy, while a few such blocks alive at once still fit beside the other models of a workflow.
DEVICE_CHUNK_BYTES = 128 << 20


def prompts_per_chunk(device, bytes_per_prompt: int) -> int:
    """How many prompts to process together so one chunk's tensors stay within the budget."""
    budget = CPU_CHUNK_BYTES if torch.device(device).type == "cpu" else DEVICE_CHUNK_BYTES
    return max(1, budget // max(1, int(bytes_per_prompt)))


def upsample_chunk_size(sam, device, height: int, width: int) -> int:
    """Masks per ``Sam.postprocess_masks`` call: float logits at the encoder's size, then at H x W."""
    return prompts_per_chunk(device, 4 * max(sam.image_encoder.img_size ** 2, height * width))


def decode_chunk_size(sam, image_embedding: torch.Tensor) -> int:
    """Prompts per ``decode_point_tokens`` call: the per-prompt image features are [N, C]."""
    return prompts_per_chunk(image_embedding.device, image_embedding[0].numel() * image_embedding.element_size())


@dataclass
class PointTokens:
    """The decoder's state after its transformer, for B prompts on one image.

    ``iou_pred`` [B, M] and ``mask_tokens`` [B, M, C] are the multimask outputs (M = 3 for SAM);
    ``keys`` [B, N, C] are the per-prompt image features the masks are made from (``None`` on the
    fallback path, where ``low_res`` [B, M, h, w] holds every mask already).
    """

    iou_pred: torch.Tensor
    mask_tokens: torch.Tensor
    keys: torch.Tensor | None
    grid: tuple[int, int]
    low_res: torch.Tensor | None = None
    #: index of the decoder mask token behind output 0 (1 with multimask output, else 0)
    first_token: int = 1


def supports_shared_decoding(decoder) -> bool:
    return type(decoder) is MaskDecoder and type(decoder.transformer) is TwoWayTransformer


def _heads(attn: Attention, proj: torch.nn.Linear):
    """``proj``'s weight [heads, d, C] and bias [heads, d], split the way Attention splits heads."""
    heads = attn.num_heads
    d = proj.weight.shape[0] // heads
    return proj.weight.view(heads, d, -1), proj.bias.view(heads, d), d


def _tokens_to_image(attn: Attention, tokens_q, image_k, image_v):
    """``attn(q=tokens_q, k=image_k, v=image_v)`` for a few tokens attending to N image tokens.

    ``image_k``/``image_v`` are [b, N, C] or one image [1, N, C] shared by all prompts. Instead of
    projecting all N image tokens to keys and values (N·C·C' per prompt), each query is mapped
    back through the key projection, q·(W_k x + b_k) = (W_kᵀq)·x + q·b_k, and the attention
    pools the raw image tokens before the value projection (the weights sum to one):
    Σ w (W_v x + b_v) = W_v (Σ w x) + b_v. Same products, in the cheaper order.
    """
    b, t, _ = tokens_q.shape
    w_k, b_k, d = _heads(attn, attn.k_proj)
    w_v, b_v, _ = _heads(attn, attn.v_proj)
    heads = attn.num_heads
    q = attn.q_proj(tokens_q).view(b, t, heads, d)
    scale = 1 / math.sqrt(d)  # applied to the small factors, not to the [heads*t, N] logits
    q_in_image = torch.einsum("bthd,hdc->bhtc", q * scale, w_k).flatten(1, 2)  # [b, heads*t, C]
    q_bias = torch.einsum("bthd,hd->bht", q * scale, b_k).flatten(1)[..., None]
    if image_k.shape[0] == 1:  # one image for all prompts: a single matrix product
        logits = torch.addmm(q_bias.flatten(0, 1), q_in_image.flatten(0, 1), image_k[0].T).view(b, heads * t, -1)
    else:
        logits = torch.baddbmm(q_bias, q_in_image, image_k.transpose(1, 2))
    weights = torch.softmax(logits, dim=-1)  # [b, heads*t, N]
    if image_v.shape[0] == 1:
        pooled = (weights.flatten(0, 1) @ image_v[0]).view(b, heads, t, -1)
    else:
        pooled = (weights @ image_v).view(b, heads, t, -1)
    out = torch.einsum("bhtc,hdc->bthd", pooled, w_v) + b_v  # [b, t, heads, d]
    return attn.out_proj(out.flatten(2))


def _image_to_tokens(attn: Attention, image_q, tokens_k, tokens_v, residual, in_place: bool):
    """``residual + attn(q=image_q, k=tokens_k, v=tokens_v)`` for N image tokens attending to a few tokens.

    The residual add rides in the last matrix product; ``in_place`` writes it into ``residual``
    (per-prompt features nobody reads again), which spares a fresh [b, N, C] block.

    The few keys are mapped back through the query projection (as in ``_tokens_to_image``) and
    each head's values through its slice of the output projection, so the N image tokens meet
    only [heads·t, C] matrices: no per-prompt [N, C'] query, head split or output projection.
    """
    b, t, _ = tokens_k.shape
    w_q, b_q, d = _heads(attn, attn.q_proj)
    heads = attn.num_heads
    k = attn.k_proj(tokens_k).view(b, t, heads, d)
    v = attn.v_proj(tokens_v).view(b, t, heads, d)
    scale = 1 / math.sqrt(d)
    # token-major order (t, head): the softmax over the t tokens then runs across contiguous
    # heads, several times faster on CPU than a softmax over a last dimension of t ≈ 7
    k_in_image = torch.einsum("bthd,hdc->bthc", k * scale, w_q).flatten(1, 2)  # [b, t*heads, C]
    k_bias = torch.einsum("bthd,hd->bth", k * scale, b_q).flatten(1)[:, None, :]
    if image_q.shape[0] == 1:
        logits = (image_q[0] @ k_in_image.flatten(0, 1).T).view(-1, b, t * heads).transpose(0, 1) + k_bias
    else:
        logits = torch.baddbmm(k_bias, image_q, k_in_image.transpose(1, 2))  # [b, N, t*heads]
    n = logits.shape[1]
    weights = torch.softmax(logits.view(b, n, t, heads), dim=2).view(b, n, t * heads)
    w_out = attn.out_proj.weight.view(-1, heads, d)  # [C, heads, d]
    v_out = torch.einsum("bthd,chd->bthc", v, w_out).flatten(1, 2)  # [b, t*heads, C]
    # each head's weights sum to one, so the output bias rides along in the values
    values = v_out + attn.out_proj.bias / heads
    if in_place and residual.dtype == weights.dtype == values.dtype:  # (autocast does not cast in-place ops)
        return residual.baddbmm_(weights, values)
    return torch.baddbmm(residual.expand(b, -1, -1), weights, values)


def _block(layer, queries, keys, query_pe, key_pe, first: bool, keys_with_pe=None):
    """``TwoWayAttentionBlock.forward``; ``keys``/``key_pe`` may be one image shared by all prompts.

    ``first``: ``keys`` is the shared image (never written to; ``keys_with_pe`` is its
    ``keys + key_pe``, made once per image); later blocks get per-prompt features this module
    made, and update them in place.
    """
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)

    q = queries + query_pe
    k = keys_with_pe if keys_with_pe is not None else keys + key_pe
    queries = layer.norm2(queries + _tokens_to_image(layer.cross_attn_token_to_image, q, k, keys))
    queries = layer.norm3(queries + layer.mlp(queries))

    q = queries + query_pe
    keys = layer.norm4(_image_to_tokens(layer.cross_attn_image_to_token, k, q, queries, keys, in_place=not first))
    return queries, keys  # from the first block on, one image feature map per prompt


@dataclass(frozen=True)
class SharedImage:
    """The decoder's inputs that are the same for every prompt on one image, made once."""

    keys: torch.Tensor  # [1, N, C]: image embedding plus the "no mask" dense prompt, token-major
    key_pe: torch.Tensor  # [1, N, C]: the prompt encoder's dense positional encoding
    keys_with_pe: torch.Tensor  # keys + key_pe, the first block's attention keys
    grid: tuple[int, int]


@torch.inference_mode()
def share_image(sam, image_embedding: torch.Tensor) -> SharedImage | None:
    """``image_embedding`` [1, C, H, W] prepared for any number of ``decode_point_tokens`` calls.

    ``None`` for a decoder that is not segment-anything's own: ``decode_point_tokens`` calls
    such a decoder as it is, and there is nothing to share.
    """
    if not supports_shared_decoding(sam.mask_decoder):
        return None
    src = image_embedding + sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).to(image_embedding.dtype)
    keys = src.flatten(2).transpose(1, 2).contiguous()
    key_pe = sam.prompt_encoder.get_dense_pe().to(src.dtype).flatten(2).transpose(1, 2).contiguous()
    return SharedImage(keys, key_pe, keys + key_pe, tuple(src.shape[-2:]))


@torch.inference_mode()
def decode_point_tokens(sam, image_embedding: torch.Tensor, sparse: torch.Tensor, multimask: bool = True,
                        shared: SharedImage | None = None) -> PointTokens:
    """Run the decoder's transformer for B prompts (``sparse`` [B, T, C]: points and/or boxes) on one image.

    ``image_embedding`` is [1, C, H, W]; there is no mask prompt (the dense prompt is the
    "no mask" embedding, as in everything mode). ``multimask``: the three ambiguity outputs, or
    the single-mask output, as ``MaskDecoder``'s ``multimask_output``. ``shared``: this image's
    ``share_image``, when the caller decodes it in several calls.
    """
    decoder = sam.mask_decoder
    if not supports_shared_decoding(decoder):
        dense_pe = sam.prompt_encoder.get_dense_pe()
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            sparse.shape[0], -1, *image_embedding.shape[-2:])
        low_res, iou_pred = decoder(image_embeddings=image_embedding, image_pe=dense_pe,
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=multimask)
        return PointTokens(iou_pred, None, None, tuple(image_embedding.shape[-2:]), low_res)

    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse), dim=1)
    shared = shared if shared is not None else share_image(sam, image_embedding)
    keys, key_pe = shared.keys, shared.key_pe
    h, w = shared.grid

    transformer = decoder.transformer
    queries = tokens
    for i, layer in enumerate(transformer.layers):
        queries, keys = _block(layer, queries, keys, tokens, key_pe, first=i == 0,
                               keys_with_pe=shared.keys_with_pe if i == 0 else None)
    final = transformer.final_attn_token_to_image
    q = queries + tokens
    k = keys + key_pe
    queries = transformer.norm_final_attn(queries + _tokens_to_image(final, q, k, keys))

    iou_pred = decoder.iou_prediction_head(queries[:, 0, :])
    mask_tokens = queries[:, 1 : 1 + decoder.num_mask_tokens, :]
    keys = keys.expand(sparse.shape[0], -1, -1)  # a transformer with no blocks never made per-prompt keys
    # multimask output: tokens 1..3; else token 0, the single-mask output (as MaskDecoder.forward)
    outputs = slice(1, None) if multimask else slice(0, 1)
    return PointTokens(iou_pred[:, outputs], mask_tokens[:, outputs], keys, (h, w), first_token=outputs.start)


def _is_standard_upscaler(upscaling) -> bool:
    """segment-anything's ConvT(2,2) → LayerNorm2d → GELU → ConvT(2,2) → GELU."""
    kinds = [torch.nn.ConvTranspose2d, LayerNorm2d, torch.nn.GELU, torch.nn.ConvTranspose2d, torch.nn.GELU]
    if len(upscaling) != len(kinds) or not all(type(m) is k for m, k in zip(upscaling, kinds)):
        return False
    convs = (upscaling[0], upscaling[3])
    return all(c.kernel_size == (2, 2) and c.stride == (2, 2) and c.padding == (0, 0) and c.groups == 1
               and c.bias is not None for c in convs) and upscaling[2].approximate == upscaling[4].approximate == "none"


def _conv_t2x2(x: torch.Tensor, conv: torch.nn.ConvTranspose2d) -> torch.Tensor:
    """A 2×2, stride-2 transposed convolution on channels-last features: one matrix product.

    Each input pixel writes its own 2×2 block, so [..., C_in] → [..., 2, 2, C_out]; the blocks
    stay in place (no interleaving copy) until the final masks are assembled.
    """
    c_in, c_out = conv.weight.shape[:2]
    weight = conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)  # [C_in, (dy, dx, C_out)]
    out = torch.addmm(conv.bias.repeat(4), x.reshape(-1, c_in), weight)
    return out.view(*x.shape[:-1], 2, 2, c_out)


def _upscaled_logits(decoder, keys: torch.Tensor, grid: tuple, mask_tokens: torch.Tensor, prompt: torch.Tensor,
                     output: torch.Tensor, first_token: int = 1) -> torch.Tensor:
    """Logits [K, 4H, 4W] of the K (``prompt``, ``output``) pairs, for ``keys`` [b, N, C] of b prompts.

    ``output_upscaling`` then the hypernetwork dot products, computed channels-last with plain
    matrix products (``ConvTranspose2d`` with a 2×2 stride-2 kernel is one per pixel), so no
    [b, C', 4H, 4W] feature map is ever laid out channel-first and copied; only the wanted
    outputs are put in image order.
    """
    b = keys.shape[0]
    h, w = grid
    mlps = decoder.output_hypernetworks_mlps
    hyper = torch.stack([mlps[first_token + i](mask_tokens[:, i]) for i in range(mask_tokens.shape[1])], dim=2)  # [b, C'', M]
    upscaling = decoder.output_upscaling
    if not _is_standard_upscaler(upscaling):
        feats = upscaling(keys.transpose(1, 2).reshape(b, -1, h, w))  # [b, C'', 4H, 4W]
        logits = (hyper.transpose(1, 2) @ feats.flatten(2)).view(b, -1, *feats.shape[-2:])
        return logits[prompt, output]
    conv1, norm, _, conv2, _ = upscaling
    x = _conv_t2x2(keys.view(b, h, w, -1), conv1)  # [b, h, w, 2, 2, C']
    x = F.gelu(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
    x = F.gelu(_conv_t2x2(x, conv2))  # [b, h, w, 2, 2, 2, 2, C'']
    logits = torch.bmm(x.view(b, -1, x.shape[-1]), hyper)  # [b, h*w*16, M]
    logits = logits[prompt, :, output]  # [K, h*w*16]
    # pixel (4i + 2·dy1 + dy2, 4j + 2·dx1 + dx2) from axes (i, j, dy1, dx1, dy2, dx2)
    logits = logits.view(-1, h, w, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
    return logits.reshape(-1, 4 * h, 4 * w)


def _upscale_chunk(decoder, tokens: PointTokens) -> int:
    """Upscaled features of one prompt: 16 pixels per token, each with the last conv's channels."""
    last = [m for m in decoder.output_upscaling if isinstance(m, torch.nn.ConvTranspose2d)]
    channels = last[-1].out_channels if last else tokens.keys.shape[-1]
    per_prompt = 16 * tokens.keys.shape[1] * channels * tokens.keys.element_size()
    return prompts_per_chunk(tokens.keys.device, per_prompt)


@torch.inference_mode()
def masks_for(sam, tokens: PointTokens, prompt_index: torch.Tensor, output_index: torch.Tensor) -> torch.Tensor:
    """Low-resolution mask logits [K, 4H, 4W] of the K (prompt, output) pairs asked for."""
    if tokens.low_res is not None:
        return tokens.low_res[prompt_index, output_index]
    h, w = tokens.grid
    out = tokens.mask_tokens.new_empty((len(prompt_index), 4 * h, 4 * w))
    prompts, inverse = torch.unique(prompt_index, return_inverse=True)
    step = UPSCALE_CHUNK or _upscale_chunk(sam.mask_decoder, tokens)
    for start in range(0, len(prompts), step):
        chunk = prompts[start : start + step]
        rows = ((inverse >= start) & (inverse < start + len(chunk))).nonzero()[:, 0]
        out[rows] = _upscaled_logits(sam.mask_decoder, tokens.keys[chunk], tokens.grid, tokens.mask_tokens[chunk],
                                     inverse[rows] - start, output_index[rows], tokens.first_token)
    return out
