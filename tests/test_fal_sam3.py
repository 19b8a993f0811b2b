"""The ``SAM 3 (fal)`` node against a loopback server answering in fal's published shapes
(``tests/vectors/fal_sam3_shapes.json``), and the RLE decoder against encoders written here from
the formats' own definitions (Kaggle's "start length" pairs; COCO's ``maskApi.c`` counts and
``rleToString``), both in column-major pixel order ("Kaggle/COCO order", fal's type docs).
"""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_sam_kit.nodes.fal_sam3 import SamKitFalSAM3
from comfyui_sam_kit.samkit.fal import sam3_schemas
from comfyui_sam_kit.samkit.fal.rle import RLEError, decode_rle
from testsupport.fal_sam3_server import SERVER_KEY, serve_sam3
from testsupport.fal_env import clear_fal_environment

H, W = 48, 64


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    clear_fal_environment(monkeypatch, tmp_path)


def _use(monkeypatch, server):
    monkeypatch.setenv("SAMKIT_FAL_BASE_URL", server.base)
    monkeypatch.setenv("FAL_KEY", SERVER_KEY)


def _image(b=1, seed=0):
    return (torch.rand(b, H, W, 3, generator=torch.Generator().manual_seed(seed)) * 255).round() / 255


def _png(mask: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(out, format="PNG")
    return out.getvalue()


def _box_mask(box: dict, scale: int = 1) -> np.ndarray:
    mask = np.zeros((H * scale, W * scale), bool)
    mask[int(box["y_min"]) * scale:(int(box["y_max"]) + 1) * scale, int(box["x_min"]) * scale:(int(box["x_max"]) + 1) * scale] = True
    return mask


# ---------------------------------------------------------------- RLE encoders from the definitions


def kaggle_rle(mask: np.ndarray) -> str:
    """Kaggle: pixels numbered from 1, top to bottom then left to right; 'start length' per run of 1s."""
    flat = np.concatenate([[0], mask.T.reshape(-1).astype(np.int8), [0]])
    edges = np.nonzero(flat[1:] != flat[:-1])[0] + 1  # 1-based positions where a run starts / ends + 1
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends))


def coco_rle(mask: np.ndarray) -> dict:
    """COCO (maskApi.c rleEncode + rleToString): column-major run lengths starting with 0s, then
    each count (after the second as a delta to the count two back) in 5-bit groups + 48."""
    flat = mask.T.reshape(-1)
    counts, current, run = [], False, 0
    for v in flat:
        if bool(v) != current:
            counts.append(run)
            current, run = bool(v), 0
        run += 1
    counts.append(run)
    chars = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return {"size": [mask.shape[0], mask.shape[1]], "counts": "".join(chars)}


def test_rle_decodes_masks_encoded_by_the_formats_definitions():
    rng = np.random.default_rng(0)
    cases = [rng.random((H, W)) > 0.6, np.zeros((H, W), bool), np.ones((H, W), bool)]
    corner = np.zeros((H, W), bool)
    corner[-1, -1] = corner[0, 0] = True  # first and last pixel: the runs' edges
    cases.append(corner)
    for mask in cases:
        assert np.array_equal(decode_rle(kaggle_rle(mask), H, W), mask)
        coco = coco_rle(mask)
        assert np.array_equal(decode_rle(coco, 1, 1), mask)  # COCO carries its own size
        assert np.array_equal(decode_rle({**coco, "counts": _plain_counts(mask)}, 1, 1), mask)
    # column-major, as both definitions say: the second pixel is below the first, not beside it
    assert decode_rle("2 1", 2, 3)[1, 0] and not decode_rle("2 1", 2, 3)[0, 1]
    with pytest.raises(RLEError, match="runs past the last pixel"):
        decode_rle(f"{H * W} 2", H, W)
    with pytest.raises(RLEError, match="neither"):
        decode_rle("abc", H, W)


def test_rle_with_numbers_past_int64_or_sizes_past_the_image_is_refused_by_name():
    # a malformed answer must give RLEError (the node's "fal answered ..." message), never an
    # OverflowError / IndexError from numpy or an allocation of terabytes
    for text in ("99999999999999999999 1", "4611686018427387905 4611686018427387904", "1 99999999999999999999"):
        with pytest.raises(RLEError, match="runs past the last pixel"):
            decode_rle(text, 4, 4)
    with pytest.raises(RLEError, match="larger than"):
        decode_rle({"size": [3_000_000, 3_000_000], "counts": [9_000_000_000_000]}, 4, 4)
    with pytest.raises(RLEError, match="does not parse"):  # json.loads raises RecursionError on this
        decode_rle('{"a": ' * 5000, 4, 4)


def _plain_counts(mask):
    flat = mask.T.reshape(-1).astype(np.int8)
    change = np.nonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))[0]
    return np.diff(np.concatenate([[0], change])).tolist()


# ---------------------------------------------------------------- sam-3/image(-rle) answers


def _sam3_answer(rle=False, scale=2, as_files=False):
    """A fal-shaped answer: one mask per requested object (its box filled), at ``scale`` x the
    input size for mask images (fal answers at its own size), with scores and normalised boxes."""
    def answer(endpoint_id, body, store):
        masks, scores, boxes = [], [], []
        for n, box in enumerate(body["box_prompts"]):
            masks.append(_box_mask(box, 1 if rle else scale))
            scores.append(0.9 - 0.1 * n)
            cx, cy = (box["x_min"] + box["x_max"] + 1) / 2 / W, (box["y_min"] + box["y_max"] + 1) / 2 / H
            boxes.append([cx, cy, (box["x_max"] - box["x_min"] + 1) / W, (box["y_max"] - box["y_min"] + 1) / H])
        out = {"scores": scores, "boxes": boxes,
               "metadata": [{"index": i, "score": s, "box": b} for i, (s, b) in enumerate(zip(scores, boxes))]}
        if rle:
            out["rle"] = [kaggle_rle(m) for m in masks]
        else:
            out["masks"] = [{"url": store(_png(m)) if as_files else
                             "data:image/png;base64," + base64.b64encode(_png(m)).decode(),
                             "content_type": "image/png", "width": m.shape[1], "height": m.shape[0]} for m in masks]
        return out
    return answer


@pytest.mark.parametrize("job,as_files", [("sam-3 (masks)", False), ("sam-3-1 (masks)", True), ("sam-3 (rle)", False)])
def test_sam3_objects_come_back_as_masks_union_and_scored_boxes(monkeypatch, job, as_files):
    image = _image(b=2)
    prompts = dict(box_prompt="[[[5,5,20,20]], [[40,10,10,30],[2,30,8,8]]]", point_prompt="[[[10,10],[60,40]], [[0,0]]]",
                   point_label="[[1,1],[0]]")
    with serve_sam3(_sam3_answer(rle="rle" in job, as_files=as_files)) as server:
        _use(monkeypatch, server)
        masks, union, boxes = SamKitFalSAM3().run(image, job, "dog", max_masks=4, endpoint="fal", **prompts)
        sent = [body for _endpoint, body in server.received]
        endpoints = {endpoint for endpoint, _body in server.received}
        stages = list(server.stages)
    assert endpoints == {sam3_schemas.SAM31_IMAGE if "3-1" in job else
                         sam3_schemas.SAM3_IMAGE_RLE if "rle" in job else sam3_schemas.SAM3_IMAGE}
    assert ("file" in stages) == as_files
    first, second = sorted(sent, key=lambda body: len(body["box_prompts"]))
    # one object per box; the point inside the box refines it, the other foreground point is one more object
    assert first["box_prompts"] == [{"x_min": 5, "y_min": 5, "x_max": 25, "y_max": 25, "object_id": 0}]
    assert first["point_prompts"] == [{"x": 10, "y": 10, "label": 1, "object_id": 0},
                                      {"x": 60, "y": 40, "label": 1, "object_id": 1}]
    assert [b["object_id"] for b in second["box_prompts"]] == [0, 1] and second["point_prompts"] == []
    assert first["prompt"] == "dog" and first["max_masks"] == 4 and first["apply_mask"] is False
    # masks at the input size, image after image; box prompts [x,y,w,h] came back as their regions
    assert masks.shape == (3, H, W) and union.shape == (2, H, W) and masks.dtype == torch.float32
    expected = [_box_mask(b) for body in (first, second) for b in body["box_prompts"]]
    for got, want in zip(masks, expected):
        assert np.array_equal(got.numpy() > 0.5, want)
    assert torch.equal(union[1], torch.maximum(masks[1], masks[2]))
    assert boxes[0] == [{"x": 5, "y": 5, "width": 21, "height": 21, "score": 0.9}]
    assert boxes[1][1] == {"x": 2, "y": 30, "width": 9, "height": 9, "score": 0.8}


def test_everything_job_reads_auto_segment_answers(monkeypatch):
    rng = np.random.default_rng(1)
    blobs = []
    for size in (6, 14, 10):
        m = np.zeros((H, W), bool)
        y, x = rng.integers(0, H - size), rng.integers(0, W - size)
        m[y:y + size, x:x + size] = True
        blobs.append(m)

    def answer(endpoint_id, body, store):
        if body["points_per_side"] == 7:  # the second image: nothing found
            found = []
        else:
            found = blobs
        combined = np.logical_or.reduce(found) if found else np.zeros((H, W), bool)
        image = lambda m: {"url": store(_png(m)), "content_type": "image/png", "width": W, "height": H}  # noqa: E731
        return {"combined_mask": image(combined), "individual_masks": [image(m) for m in found]}

    with serve_sam3(answer) as server:
        _use(monkeypatch, server)
        masks, union, boxes = SamKitFalSAM3().run(_image(), "everything (sam2/auto-segment)", "", "[[0,0,0,0]]",
                                                  "[[0,0]]", "[0]", 3, "fal", points_per_side=8, pred_iou_thresh=0.5)
        empty = SamKitFalSAM3().run(_image(), "everything (sam2/auto-segment)", "", "[[0,0,0,0]]", "[[0,0]]", "[0]",
                                    3, "fal", points_per_side=7)
        (endpoint, body), _ = server.received
    assert endpoint == "fal-ai/sam2/auto-segment" and body["points_per_side"] == 8 and body["pred_iou_thresh"] == 0.5
    assert set(body) <= set(sam3_schemas.AUTO_SEGMENT_FIELDS)
    order = sorted(range(3), key=lambda i: -blobs[i].sum())  # largest first
    assert [np.array_equal(m.numpy() > 0.5, blobs[i]) for m, i in zip(masks, order)] == [True] * 3
    assert np.array_equal(union[0].numpy() > 0.5, np.logical_or.reduce(blobs))
    assert [b["width"] for b in boxes[0]] == [14, 10, 6] and all("score" not in b for b in boxes[0])
    assert empty[0].shape == (1, H, W) and not empty[0].any() and empty[2] == [[]]


def test_requests_outside_the_published_schema_are_never_sent(monkeypatch):
    with serve_sam3(_sam3_answer()) as server:
        _use(monkeypatch, server)
        with pytest.raises(ValueError, match=r"max_masks: Input should be an integer from 1 to 32"):
            SamKitFalSAM3().run(_image(), "sam-3 (masks)", "cat", "[[0,0,0,0]]", "[[0,0]]", "[0]", 40, "fal")
        with pytest.raises(ValueError, match="needs a text prompt, a foreground point or a box"):
            SamKitFalSAM3().run(_image(), "sam-3 (masks)", "  ", "[[0,0,0,0]]", "[[5,5]]", "[0]", 3, "fal")
        with pytest.raises(ValueError, match="pred_iou_thresh: Input should be a number from 0 to 1"):
            SamKitFalSAM3().run(_image(), "everything (sam2/auto-segment)", "", "[[0,0,0,0]]", "[[0,0]]", "[0]", 3,
                                "fal", pred_iou_thresh=1.5)
        assert server.stages == []
    # the validator itself speaks fal's 422 shape
    errors = sam3_schemas.validate_sam3({"image_url": "data:image/png;base64,AAAA", "point_prompts": [{"x": 1, "label": 2}],
                                         "colour": "red"})
    assert {tuple(e["loc"]) for e in errors} == {("body", "point_prompts", 0, "label"), ("body", "colour")}


def test_a_config_section_with_app_sends_jobs_to_the_deployed_pack_with_the_fal_key(monkeypatch, tmp_path):
    def answer(endpoint_id, body, store):
        return {"combined_mask": {"url": store(_png(np.zeros((H, W), bool)))}, "individual_masks": []}

    with serve_sam3(answer) as server:
        _use(monkeypatch, server)  # fal's queue (here: loopback) and fal's key
        config = tmp_path / "config" / "comfyui-sam-kit" / "fal.ini"
        config.parent.mkdir(parents=True)
        config.write_text("[studio-fal]\napp = me/samkit\n")
        assert SamKitFalSAM3.INPUT_TYPES()["required"]["endpoint"][0] == ["fal", "studio-fal"]
        masks, _union, _boxes = SamKitFalSAM3().run(_image(), "everything (sam2/auto-segment)", "", "[[0,0,0,0]]",
                                                    "[[0,0]]", "[0]", 3, "studio-fal")
        with pytest.raises(ValueError, match="does not serve fal-ai/sam-3/image"):
            SamKitFalSAM3().run(_image(), "sam-3 (masks)", "cat", "[[0,0,0,0]]", "[[0,0]]", "[0]", 3, "studio-fal")
        config.write_text("[studio-fal]\napp = me/samkit/extra\n")
        with pytest.raises(ValueError, match="must be the id 'fal deploy' printed"):
            SamKitFalSAM3().run(_image(), "everything (sam2/auto-segment)", "", "[[0,0,0,0]]", "[[0,0]]", "[0]", 3,
                                "studio-fal")
        received = [endpoint for endpoint, _body in server.received]
    assert received == ["me/samkit/auto-segment"] and masks.shape == (1, H, W)


def test_cancel_timeout_and_key_work_as_on_the_other_remote_nodes(monkeypatch, caplog):
    import threading

    from comfyui_sam_kit.samkit.fal.errors import FalTimeoutError
    from testsupport.fal_host import FakeComfyHost, InterruptProcessingException
    from testsupport.fal_server import wait_until

    caplog.set_level("DEBUG")
    host = FakeComfyHost(monkeypatch)
    args = (_image(b=2), "sam-3 (masks)", "cat", "[[0,0,0,0]]", "[[0,0]]", "[0]", 3, "fal")
    with serve_sam3(_sam3_answer()) as server:
        _use(monkeypatch, server)
        server.hold = True
        watcher = threading.Thread(target=lambda: (wait_until(lambda: server.stages.count("submit") == 2,
                                                              what="both submits"), host.interrupt()))
        watcher.start()
        with pytest.raises(InterruptProcessingException):
            SamKitFalSAM3().run(*args)
        watcher.join()
        assert server.stages.count("cancel") == 2 and any(t.startswith("SAM 3 (fal)") for t in host.texts)
        with pytest.raises(FalTimeoutError, match="did not finish within 1 s and was cancelled"):
            SamKitFalSAM3().run(*args[:-1], "fal", timeout=1)
        assert server.stages.count("cancel") == 4
    secret = SERVER_KEY.split(":")[1]
    assert caplog.text and secret not in caplog.text and secret not in repr(SamKitFalSAM3.INPUT_TYPES())


def test_normalised_boxes_are_scaled_to_the_input_and_kept_inside_it():
    from comfyui_sam_kit.samkit.fal.sam3_remote import _box

    # fal's [cx, cy, w, h] of a box half outside the left edge: clipped to the image, not negative
    assert _box(np.zeros((H, W), bool), [0.0, 0.5, 0.5, 0.25], 0.5) == {"x": 0, "y": 18, "width": 16, "height": 12,
                                                                         "score": 0.5}


def test_non_finite_scores_and_boxes_in_an_answer_are_treated_as_absent(monkeypatch):
    # Python's JSON reader accepts NaN / Infinity; such a box must not reach int(round(...)) (a bare
    # "cannot convert float NaN to integer") and such a score must not reach the BOUNDING_BOX output
    def answer(endpoint_id, body, store):
        mask = _box_mask(body["box_prompts"][0])
        return {"rle": [kaggle_rle(mask)], "scores": [float("nan")], "boxes": [[float("nan"), 0.5, float("inf"), 0.1]]}

    with serve_sam3(answer) as server:
        _use(monkeypatch, server)
        masks, _union, boxes = SamKitFalSAM3().run(_image(), "sam-3 (rle)", "", "[[5,5,20,20]]", "[[0,0]]", "[0]", 3, "fal")
    assert np.array_equal(masks[0].numpy() > 0.5, _box_mask({"x_min": 5, "y_min": 5, "x_max": 25, "y_max": 25}))
    assert boxes == [[{"x": 5, "y": 5, "width": 21, "height": 21}]]  # from the mask, no score
