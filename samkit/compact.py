"""Masks kept compact until an output is made: each mask's bounding box, 8 pixels to a byte.

Segment-everything on a large image can find hundreds of masks. As full-size bool tensors they
cost N×H×W bytes (7.1 GB for 568 masks of a 4096×3072 image) before a float32 output four times
that size is even allocated. :class:`CompactMasks` keeps only the pixels inside each mask's tight
bounding box, bit-packed with ``numpy.packbits`` on the CPU: at most N×H×W/8 bytes, usually far
less. Masks are expanded one at a time, straight into a preallocated output
(:meth:`CompactMasks.write`) or a label map (:meth:`CompactMasks.label_map`), so making the
outputs needs the outputs plus one image-sized working buffer.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch


class _Entry(NamedTuple):
    packed: np.ndarray  # uint8 [ceil(bh*bw/8)]: the box's pixels, row-major, packbits order
    box: tuple  # (x0, y0, x1, y1), inclusive pixel bounds; None for an empty mask
    area: int  # pixels set


_EMPTY = _Entry(np.zeros((0,), dtype=np.uint8), None, 0)


class CompactMasks:
    """N bool masks of one ``height`` × ``width`` image, stored compactly on the CPU.

    Build with :meth:`from_dense` / :meth:`add` (bool or 0/1 uint8 ``[k,h,w]`` tensors on any
    device; ``offset`` places masks of a crop in the full image). Indexing with a bool/long
    tensor or list gives another ``CompactMasks`` sharing the same packed data.
    """

    def __init__(self, height: int, width: int, entries: Iterable[_Entry] = ()):
        self.height, self.width = int(height), int(width)
        self._entries: list[_Entry] = list(entries)

    @classmethod
    def from_dense(cls, masks: torch.Tensor) -> "CompactMasks":
        store = cls(masks.shape[-2], masks.shape[-1])
        store.add(masks)
        return store

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> list:
        return self._entries

    @property
    def nbytes(self) -> int:
        return sum(e.packed.nbytes for e in self._entries)

    def add(self, masks: torch.Tensor, offset: tuple[int, int] = (0, 0)) -> None:
        """Append masks ``[k,h,w]`` (bool, or uint8 0/1) whose pixel (0, 0) is image pixel ``offset`` (x, y)."""
        if masks.ndim != 3:
            raise ValueError(f"masks must be [k, h, w], got shape {tuple(masks.shape)}")
        if masks.shape[0] == 0:
            return
        masks = masks if masks.dtype == torch.bool else masks != 0
        ox, oy = int(offset[0]), int(offset[1])
        # the boxes of the whole chunk in one pass on the masks' device; only box pixels move
        rows = masks.any(dim=2).cpu().numpy()  # [k, h]
        cols = masks.any(dim=1).cpu().numpy()  # [k, w]
        for i in range(masks.shape[0]):
            ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
            if ys.size == 0:
                self._entries.append(_EMPTY)
                continue
            y0, y1, x0, x1 = int(ys[0]), int(ys[-1]), int(xs[0]), int(xs[-1])
            pixels = masks[i, y0 : y1 + 1, x0 : x1 + 1].cpu().numpy()
            self._entries.append(_Entry(np.packbits(pixels, axis=None), (x0 + ox, y0 + oy, x1 + ox, y1 + oy),
                                        int(np.count_nonzero(pixels))))

    def add_numpy(self, mask: np.ndarray) -> None:
        """Append one full-size bool numpy mask ``[H,W]``."""
        self.add(torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None])

    def __getitem__(self, index) -> "CompactMasks":
        if isinstance(index, torch.Tensor):
            index = index.cpu()
            index = index.nonzero()[:, 0] if index.dtype == torch.bool else index
            index = index.tolist()
        elif isinstance(index, np.ndarray):
            index = np.flatnonzero(index).tolist() if index.dtype == bool else index.tolist()
        return CompactMasks(self.height, self.width, [self._entries[int(i)] for i in index])

    @property
    def areas(self) -> torch.Tensor:
        """int64 ``[N]``: pixels of each mask (what ``masks.flatten(1).sum(1)`` gives)."""
        return torch.as_tensor([e.area for e in self._entries], dtype=torch.int64)

    @property
    def boxes(self) -> torch.Tensor:
        """int64 ``[N,4]`` tight xyxy boxes, inclusive (``batched_mask_to_box``'s; 0s for an empty mask)."""
        return torch.as_tensor([e.box or (0, 0, 0, 0) for e in self._entries], dtype=torch.int64).reshape(-1, 4)

    def box_pixels(self, i: int) -> tuple[tuple, np.ndarray] | None:
        """``((x0, y0, x1, y1), bool [y1-y0+1, x1-x0+1])`` of mask ``i``; None when it is empty."""
        entry = self._entries[i]
        if entry.box is None:
            return None
        x0, y0, x1, y1 = entry.box
        shape = (y1 - y0 + 1, x1 - x0 + 1)
        bits = np.unpackbits(entry.packed, count=shape[0] * shape[1])
        return entry.box, bits.reshape(shape).view(bool)

    def mask(self, i: int) -> np.ndarray:
        """Mask ``i`` as a full-size bool numpy array ``[H,W]`` (allocates H×W bytes)."""
        out = np.zeros((self.height, self.width), dtype=bool)
        found = self.box_pixels(i)
        if found is not None:
            (x0, y0, x1, y1), pixels = found
            out[y0 : y1 + 1, x0 : x1 + 1] = pixels
        return out

    def write(self, out: torch.Tensor, indices: Sequence[int] | None = None) -> None:
        """Write masks ``indices`` (default all) as 1s into ``out[j]`` (``[k,H,W]``, zero-filled, any dtype/device)."""
        indices = range(len(self)) if indices is None else indices
        for j, i in enumerate(indices):
            found = self.box_pixels(int(i))
            if found is None:
                continue
            (x0, y0, x1, y1), pixels = found
            out[j, y0 : y1 + 1, x0 : x1 + 1].copy_(torch.from_numpy(pixels))

    def dense(self, indices: Sequence[int] | None = None) -> torch.Tensor:
        """Bool ``[k,H,W]`` CPU tensor of masks ``indices`` (default all): full size, so only for small sets."""
        indices = range(len(self)) if indices is None else indices
        out = torch.zeros((len(indices), self.height, self.width), dtype=torch.bool)
        self.write(out, indices)
        return out

    def label_map(self, order: Sequence[int] | None = None) -> np.ndarray:
        """int32 ``[H,W]``: at each pixel the index of the last mask in ``order`` covering it, -1 where none."""
        labels = np.full((self.height, self.width), -1, dtype=np.int32)
        for i in (range(len(self)) if order is None else order):
            found = self.box_pixels(int(i))
            if found is not None:
                (x0, y0, x1, y1), pixels = found
                labels[y0 : y1 + 1, x0 : x1 + 1][pixels] = int(i)
        return labels

    def values_at(self, xs: Sequence[int], ys: Sequence[int]) -> torch.Tensor:
        """Bool ``[N,P]``: whether mask n covers pixel (xs[p], ys[p])."""
        result = torch.zeros((len(self), len(xs)), dtype=torch.bool)
        for n, entry in enumerate(self._entries):
            if entry.box is None:
                continue
            x0, y0, x1, y1 = entry.box
            width = x1 - x0 + 1
            for p, (x, y) in enumerate(zip(xs, ys)):
                if x0 <= x <= x1 and y0 <= y <= y1:
                    bit = (int(y) - y0) * width + (int(x) - x0)
                    result[n, p] = bool((entry.packed[bit >> 3] >> (7 - (bit & 7))) & 1)
        return result
