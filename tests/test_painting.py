"""Colour maps: deterministic, exact 8-bit colours, largest first, and a picker that reads them back."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_sam_kit.nodes.segment_picker import SamKitSegmentPicker
from comfyui_sam_kit.samkit.painting import (
    area_order,
    colour_mask,
    paint_segments,
    palette,
    parse_hex_colour,
    pick_segment,
)
from comfyui_sam_kit.samkit.painting import _MIN_BRIGHTNESS  # the palette's own floor (brightest channel)


def _nested_masks(h=40, w=60):
    big = torch.zeros(h, w, dtype=torch.bool)
    big[5:35, 5:55] = True
    small = torch.zeros(h, w, dtype=torch.bool)
    small[10:20, 10:20] = True  # inside big
    side = torch.zeros(h, w, dtype=torch.bool)
    side[30:40, 52:60] = True  # overlaps big's corner (80 px)
    return torch.stack([small, big, side])


def test_palette_is_deterministic_distinct_and_never_black():
    a = palette(300, seed=7)
    assert (a == palette(300, seed=7)).all()
    assert len({tuple(c) for c in a}) == 300
    # never black-ish: the brightest channel of every colour reaches the palette's floor, so no
    # segment looks like the black "nothing here" background
    assert a.max(axis=1).min() >= _MIN_BRIGHTNESS
    assert not (a == 0).all(axis=1).any()
    assert not (palette(10, seed=8) == a[:10]).all()
    # the first colours do not depend on how many are asked for
    assert (palette(5, seed=7) == a[:5]).all()


def test_small_segments_are_painted_over_large_ones():
    masks = _nested_masks()
    order = area_order(masks)
    assert order.tolist() == [1, 0, 2]  # big, small (100 px), side (80 px)
    ordered = masks[order]
    colours = palette(3, seed=0)
    seg = paint_segments(ordered, colours=colours)
    as_u8 = (seg * 255).round().to(torch.uint8)
    assert as_u8[15, 15].tolist() == colours[1].tolist()  # the small one, on top of big
    assert as_u8[25, 30].tolist() == colours[0].tolist()  # big
    assert as_u8[0, 0].tolist() == [0, 0, 0]  # background stays black
    assert as_u8[38, 58].tolist() == colours[2].tolist()
    assert as_u8[33, 52].tolist() == colours[2].tolist()  # side is painted over big


def test_colours_survive_a_png_round_trip_and_pick_back_the_visible_segment():
    masks = _nested_masks()[area_order(_nested_masks())]
    seg = paint_segments(masks, seed=3)
    buf = io.BytesIO()
    Image.fromarray((seg * 255).round().to(torch.uint8).numpy()).save(buf, format="PNG")
    reloaded = torch.from_numpy(np.asarray(Image.open(io.BytesIO(buf.getvalue())))).float()[None] / 255
    picked = pick_segment(reloaded, x=12, y=12)
    assert picked.shape == (1, 40, 60)
    assert torch.equal(picked[0].bool(), masks[1])  # the small square, exactly
    big_visible = masks[0] & ~masks[1] & ~masks[2]
    assert torch.equal(pick_segment(reloaded, x=30, y=25)[0].bool(), big_visible)


def test_picker_by_colour_and_on_a_batch():
    masks = _nested_masks()
    seg = torch.stack([paint_segments(masks[area_order(masks)], seed=1)] * 2)
    r, g, b = palette(3, seed=1)[0].tolist()
    by_colour = SamKitSegmentPicker().run(seg, 0, 0, f"#{r:02x}{g:02x}{b:02x}")[0]
    assert by_colour.shape == (2, 40, 60) and by_colour.dtype == torch.float32
    assert torch.equal(by_colour[0], by_colour[1])
    assert by_colour[0].sum() > 0
    assert torch.equal(by_colour, colour_mask(seg, (r, g, b)))
    # the background under the point gives an empty mask, not "all black pixels"
    assert pick_segment(seg, 0, 0).sum() == 0


@pytest.mark.parametrize("text,expected", [("#ff8800", (255, 136, 0)), ("FF8800", (255, 136, 0)),
                                           ("0x0a0b0c", (10, 11, 12)), ("rgb(1, 2, 3)", (1, 2, 3))])
def test_parse_hex_colour(text, expected):
    assert parse_hex_colour(text) == expected


@pytest.mark.parametrize("text", ["red", "#12345", "rgb(300,0,0)", "#gg0000"])
def test_bad_colour_is_a_clear_error(text):
    with pytest.raises(ValueError, match="#rrggbb"):
        parse_hex_colour(text)


def test_picker_point_outside_the_map_is_a_clear_error():
    seg = torch.zeros(1, 10, 20, 3)
    with pytest.raises(ValueError, match="outside the 20x10"):
        pick_segment(seg, 20, 5)
