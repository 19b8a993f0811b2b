"""TinyViT image encoder ("vit_t"): the encoder of MobileSAM and TinySAM.

Written for this pack from the published architecture. Parameter names reproduce those
checkpoints' ``image_encoder.*`` keys exactly, so ``mobile_sam.pt`` and ``tinysam_*.pth`` load
with ``strict=True``:

* ``patch_embed.seq.{0,2}.{c,bn}``: two stride-2 conv+BN layers (1/4 resolution);
* ``layers.0``: MBConv blocks (``blocks.N.conv{1,2,3}.{c,bn}``) then ``downsample``;
* ``layers.1..3``: attention blocks (``attn.{norm,qkv,proj,attention_biases}``,
  ``local_conv.{c,bn}``, ``mlp.{norm,fc1,fc2}``), each stage but the last ending in a
  ``downsample`` (``conv{1,2,3}.{c,bn}``);
* ``norm_head`` / ``head``: the ImageNet classifier the checkpoints still carry (unused);
* ``neck.{0..3}``: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d (as SAM's ViT neck).

The grid sizes follow the input tensor, so the module also runs on inputs smaller than its
``img_size`` (the tests use that to stay fast); at 1024 px the output is ``[B, 256, 64, 64]``,
what segment-anything's prompt encoder and mask decoder expect.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class TinyViTConfig:
    """Architecture of a TinyViT encoder. The defaults are MobileSAM's (TinyViT-5M at 1024 px)."""

    embed_dims: tuple = (64, 128, 160, 320)
    depths: tuple = (2, 2, 6, 2)
    num_heads: tuple = (2, 4, 5, 10)  # stage 0 is convolutional; its entry is unused
    window_sizes: tuple = (7, 7, 14, 7)  # likewise
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    num_classes: int = 1000  # the released checkpoints keep their (unused) classifier head
    in_chans: int = 3
    img_size: int = 1024
    out_chans: int = 256

    def __post_init__(self):
        n = len(self.embed_dims)
        if not (len(self.depths) == len(self.num_heads) == len(self.window_sizes) == n == 4):
            raise ValueError("TinyViT for SAM has exactly four stages (embed_dims, depths, num_heads, window_sizes)")
        for dim, heads in zip(self.embed_dims[1:], self.num_heads[1:]):
            if dim % heads:
                raise ValueError(f"embed dim {dim} is not divisible by {heads} heads")
        if self.img_size % 64:
            raise ValueError(f"img_size must be a multiple of 64, not {self.img_size}")


class ConvBN(nn.Sequential):
    """Bias-free convolution followed by batch norm (checkpoint keys ``c`` and ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, pad: int = 0, groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.seq = nn.Sequential(ConvBN(in_chans, dim // 2, 3, 2, 1), nn.GELU(), ConvBN(dim // 2, dim, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: expand (1x1), depthwise 3x3, project (1x1), add, GELU."""

    def __init__(self, dim: int, expand_ratio: float):
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Channel change plus an optional stride-2 depthwise conv; returns tokens and the new grid."""

    def __init__(self, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor, hw: tuple) -> tuple:
        if x.ndim == 3:  # tokens [B, H*W, C] -> map [B, C, H, W]
            x = x.transpose(1, 2).reshape(x.shape[0], -1, hw[0], hw[1])
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


def _relative_offset_index(window: int) -> torch.Tensor:
    """Index of each (query, key) pair's |dy|,|dx| offset, numbered in first-seen order.

    The numbering decides which column of ``attention_biases`` a pair uses, so it must match
    the order the checkpoints were trained with: row-major cells, first occurrence first.
    """
    cells = list(itertools.product(range(window), range(window)))
    numbering: dict = {}
    index = [
        numbering.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(numbering)) for a in cells for b in cells
    ]
    return torch.tensor(index, dtype=torch.long).view(len(cells), len(cells))


class Attention(nn.Module):
    """Multi-head self-attention inside a window, with a learned bias per head and offset."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window = window
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        # derived from `window`; not in the checkpoints (rebuilt by reset_non_persistent_buffers)
        self.register_buffer("attention_bias_idxs", _relative_offset_index(window), persistent=False)

    def reset_non_persistent_buffers(self) -> None:
        self.attention_bias_idxs = _relative_offset_index(self.window).to(self.attention_biases.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        # per head the projection holds q, k, v side by side (the checkpoints' layout)
        q, k, v = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim).split(self.head_dim, dim=3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        attn = (q @ k.transpose(-2, -1)) * self.scale + bias.to(q.dtype)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention (zero-padded to whole windows), depthwise conv, MLP; residuals around 1 and 3."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int):
        super().__init__()
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def _windowed_attention(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        ws = self.window
        if h == ws and w == ws:
            return self.attn(x)
        grid = x.view(b, h, w, c)
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_h or pad_w:
            grid = F.pad(grid, (0, 0, 0, pad_w, 0, pad_h))
        ph, pw = h + pad_h, w + pad_w
        nh, nw = ph // ws, pw // ws
        windows = grid.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        windows = self.attn(windows)
        grid = windows.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        return grid[:, :h, :w].reshape(b, h * w, c)

    def forward(self, x: torch.Tensor, hw: tuple) -> torch.Tensor:
        h, w = hw
        b, n, c = x.shape
        x = x + self._windowed_attention(x, h, w)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks on a feature map, then ``downsample`` to tokens."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> tuple:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x, (x.shape[2], x.shape[3]))


class AttentionStage(nn.Module):
    """Stages 1-3: TinyViT blocks on tokens, then an optional ``downsample``."""

    def __init__(self, blocks: list, downsample: "PatchMerging | None"):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, hw: tuple) -> tuple:
        for block in self.blocks:
            x = block(x, hw)
        return self.downsample(x, hw) if self.downsample is not None else (x, hw)


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of a [B, C, H, W] map (SAM's neck normalisation)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - mean) / torch.sqrt(var + self.eps)) + self.bias[:, None, None]


class TinyViT(nn.Module):
    """SAM image encoder with a TinyViT backbone: [B, 3, S, S] -> [B, out_chans, S/16, S/16]."""

    def __init__(self, config: TinyViTConfig = TinyViTConfig()):
        super().__init__()
        self.config = config
        self.img_size = config.img_size  # segment-anything's predictor and transforms read this
        dims, depths = config.embed_dims, config.depths
        last = len(dims) - 1
        self.patch_embed = PatchEmbed(config.in_chans, dims[0])
        stages: list = []
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            downsample = None
            if i < last:
                # Every merge halves the grid except the one into the last stage, so a 1024 px
                # input ends on the 64x64 grid SAM's decoder works on (1/4, 1/8, 1/16, 1/16).
                downsample = PatchMerging(dim, dims[i + 1], stride=1 if i + 1 == last else 2)
            if i == 0:
                stages.append(ConvStage(dim, depth, config.mbconv_expand_ratio, downsample))
            else:
                blocks = [
                    TinyViTBlock(dim, config.num_heads[i], config.window_sizes[i], config.mlp_ratio, config.local_conv_size)
                    for _ in range(depth)
                ]
                stages.append(AttentionStage(blocks, downsample))
        self.layers = nn.ModuleList(stages)
        self.norm_head = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], config.num_classes) if config.num_classes > 0 else nn.Identity()
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], config.out_chans, 1, bias=False),
            LayerNorm2d(config.out_chans),
            nn.Conv2d(config.out_chans, config.out_chans, 3, padding=1, bias=False),
            LayerNorm2d(config.out_chans),
        )

    def reset_non_persistent_buffers(self) -> None:
        """Recompute buffers that are not stored in checkpoints (after building on the meta device)."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.reset_non_persistent_buffers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x, hw = self.layers[0](x)
        for stage in self.layers[1:]:
            x, hw = stage(x, hw)
        b, _, c = x.shape
        return self.neck(x.transpose(1, 2).reshape(b, c, hw[0], hw[1]))
