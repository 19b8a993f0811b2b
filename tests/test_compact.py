"""CompactMasks: bit-packed boxes give back exactly the masks that went in."""

import numpy as np
import pytest
import torch
from segment_anything.utils.amg import batched_mask_to_box

from comfyui_sam_kit.samkit.compact import CompactMasks
from comfyui_sam_kit.samkit.outputs import mask_rows


def _masks(n=9, h=37, w=53, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
        y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
        masks[i, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.6  # ragged, odd-sized boxes
    masks[2] = False  # an empty mask
    masks[5] = True  # a full one
    return torch.from_numpy(masks)


def test_round_trip_areas_and_boxes():
    masks = _masks()
    store = CompactMasks.from_dense(masks)
    assert torch.equal(store.dense(), masks)
    assert torch.equal(store.areas, masks.flatten(1).sum(1))
    assert torch.equal(store.boxes, batched_mask_to_box(masks))
    assert store.nbytes < masks.numel() // 8 + len(masks)  # packed: at most a bit per pixel (+ padding)
    picked = store[torch.tensor([5, 0, 2])]
    assert torch.equal(picked.dense(), masks[[5, 0, 2]])
    assert torch.equal(store[store.areas > 0].dense(), masks[masks.flatten(1).any(1)])


def test_crop_offsets_and_writing_into_a_float_output():
    masks = _masks(n=6, h=20, w=30, seed=1)
    store = CompactMasks(50, 70)
    store.add(masks, offset=(11, 7))  # a crop whose top-left pixel is (x=11, y=7)
    expected = torch.zeros((6, 50, 70), dtype=torch.bool)
    expected[:, 7:27, 11:41] = masks
    assert torch.equal(store.dense(), expected)
    out = torch.zeros((2, 50, 70))
    store.write(out, [3, 1])
    assert torch.equal(out, expected[[3, 1]].float())


def test_label_map_and_values_at():
    masks = _masks(seed=2)
    store = CompactMasks.from_dense(masks)
    order = [4, 0, 8, 1]
    labels = torch.full(masks.shape[1:], -1, dtype=torch.int32)
    for i in order:  # later masks on top
        labels[masks[i]] = i
    assert torch.equal(torch.from_numpy(store.label_map(order)), labels)
    xs, ys = [0, 52, 17, 30], [0, 36, 20, 3]
    assert torch.equal(store.values_at(xs, ys), masks[:, ys, xs])


def test_uint8_masks_on_their_device_and_a_bad_shape():
    masks = _masks(seed=3)
    assert torch.equal(CompactMasks.from_dense(masks.to(torch.uint8)).dense(), masks)
    with pytest.raises(ValueError, match=r"\[k, h, w\]"):
        CompactMasks(4, 4).add(torch.zeros(4, 4, dtype=torch.bool))


def test_mask_rows_give_every_image_at_least_one_row():
    assert mask_rows([3, 0, 2, 0]) == [0, 3, 4, 6, 7]
    assert mask_rows([0, 0]) == [0, 1, 2]
