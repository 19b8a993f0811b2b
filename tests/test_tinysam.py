"""Tiny SAM: prompt parsing, fidelity with the reference implementations, embedding cache."""

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from ultralytics import FastSAM

from comfyui_sam_kit.nodes.tiny_sam import SamKitTinySAM
from comfyui_sam_kit.samkit import loader, point_decoder
from comfyui_sam_kit.samkit.embedding_cache import embeddings
from comfyui_sam_kit.samkit.prompts import PromptError, parse_prompts
from comfyui_sam_kit.samkit.tiny_sam_job import TinySamRequest, segment_with_prompts
from testsupport.checkpoints import build_small_sam, save_fastsam_checkpoint, save_sam_checkpoint

H, W = 90, 140


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    sam = build_small_sam(seed=4)
    with torch.no_grad():  # spread the untrained decoder's logits so masks are not all empty
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(40.0)
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(1.0)  # scores above the default confidence
    return save_sam_checkpoint(sam, folder / "small.pth"), save_fastsam_checkpoint(folder / "fastsam.pt")


@pytest.fixture
def sam_model(model_files):
    return loader.load_model(str(model_files[0]), device="cpu")


@pytest.fixture
def fastsam_model(model_files):
    return loader.load_model(str(model_files[1]), device="cpu")


def _image(b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, H, W, 3, generator=g)


def _u8(image):
    return (image[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _run(model, image, **kw):
    args = dict(size=256, confidence=0.0, iou=0.9, box_prompt="[[0,0,0,0]]", point_prompt="[[0,0]]", point_label="[0]")
    args.update(kw)
    return SamKitTinySAM().run(model, image, **args)


# ---------------------------------------------------------------- prompt parsing


def test_fal_defaults_mean_no_prompt_and_lists_are_read_per_image():
    (p,) = parse_prompts(1, W, H)
    assert p.empty
    a, b = parse_prompts(2, W, H, point_prompt="[[[10,20]], [[30,40],[50,60]]]", point_label="[[1],[1,0]]")
    assert a.points == ((10, 20),) and b.points == ((30, 40), (50, 60)) and b.labels == (1, 0)
    (p,) = parse_prompts(1, W, H, positive_coords='[{"x": 5, "y": 6}]', negative_coords="[{'x': 7, 'y': 8}]",
                         bboxes=[{"x": 1, "y": 2, "width": 30, "height": 40}], box_prompt=[[3, 4, 10, 10]])
    assert p.points == ((5, 6), (7, 8)) and p.labels == (1, 0)
    # boxes come back as corners (x0, y0, x1, y1): box_prompt first, then bboxes
    assert p.boxes == ((3, 4, 13, 14), (1, 2, 31, 42))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(point_prompt="[[10,20]", point_label="[1]"), "point_prompt is not valid JSON"),
        # nesting past Python's JSON parser raises RecursionError there, not JSONDecodeError
        (dict(box_prompt="[" * 5000 + "]" * 5000), "box_prompt is nested too deeply"),
        (dict(point_prompt="[[10,20],[30,40]]", point_label="[1]"), "point_label has 1 label but point_prompt has 2 points; give one label"),
        (dict(point_prompt=f"[[{W},5]]", point_label="[1]"), "point_prompt: point .* is outside the 140x90 image"),
        (dict(point_prompt="[[10,20]]", point_label="[2]"), "1 \\(foreground\\) or 0 \\(background\\)"),
        (dict(box_prompt="[[10,10,-5,5]]"), "box_prompt: box .* has no area"),
        (dict(box_prompt="[[1,2,3]]"), "box_prompt: .* Write boxes as \\[\\[x, y, width, height\\]"),
        (dict(positive_coords='[{"x": 500, "y": 5}]'), "positive_coords: point .* outside"),
        (dict(bboxes=[{"x": 1}]), "bboxes: .* Connect a BOUNDING_BOX: \\{x, y, width, height\\}"),
    ],
)
def test_bad_prompts_are_clear_errors_naming_the_input(kwargs, match):
    with pytest.raises(PromptError, match=match):
        parse_prompts(1, W, H, **kwargs)


def test_bad_prompt_reaches_the_user_from_the_node(sam_model):
    with pytest.raises(PromptError, match="point_label"):
        _run(sam_model, _image(), point_prompt="[[10,10]]", point_label="[1,1]")


# ---------------------------------------------------------------- SAM family vs SamPredictor


def test_single_click_matches_sam_predictor_best_of_three(sam_model):
    image = _image()
    predictor = SamPredictor(sam_model.runner)
    predictor.set_image(_u8(image))
    masks, scores, _ = predictor.predict(point_coords=np.array([[60, 40]]), point_labels=np.array([1]), multimask_output=True)
    expected = torch.as_tensor(masks[int(np.argmax(scores))])
    _, mask, objects, boxes = _run(sam_model, image, point_prompt="[[60,40]]", point_label="[1]")
    assert objects.shape == (1, H, W)
    assert torch.equal(mask[0].bool(), expected)


@pytest.mark.parametrize("chunk_bytes", [None, 1], ids=["one-call", "one-box-per-call"])
def test_several_boxes_are_several_objects_like_sam_predictor(sam_model, chunk_bytes, monkeypatch):
    if chunk_bytes is not None:  # many objects are decoded a few at a time, sharing the image side
        monkeypatch.setattr(point_decoder, "CPU_CHUNK_BYTES", chunk_bytes)
    image = _image(seed=1)
    predictor = SamPredictor(sam_model.runner)
    predictor.set_image(_u8(image))
    xywh = [[10, 10, 50, 40], [70, 30, 60, 50]]
    expected = []
    for x, y, w, h in xywh:
        m, _, _ = predictor.predict(box=np.array([x, y, x + w, y + h]), multimask_output=False)
        expected.append(torch.as_tensor(m[0]))
    _, mask, objects, boxes = _run(sam_model, image, box_prompt=str(xywh))
    got = sorted((o.bool() for o in objects), key=lambda t: int(t.sum()))
    want = sorted(expected, key=lambda t: int(t.sum()))
    assert len(got) == 2
    for g, e in zip(got, want):
        # measured: identical masks (IoU 1.0, ~8000 px each); 0.99 allows a rim of rounding (other
        # BLAS kernels when the boxes run together), a wrong box's mask is far below
        assert (g & e).sum() / (g | e).sum().clamp(min=1) >= 0.99
    assert torch.equal(mask[0].bool(), expected[0] | expected[1])


def test_prompt_edits_reuse_the_image_embedding(sam_model):
    embeddings.clear()
    image = _image(seed=2)
    before = embeddings.encoder_calls
    _run(sam_model, image, point_prompt="[[20,20]]", point_label="[1]")
    _run(sam_model, image, point_prompt="[[60,50]]", point_label="[1]")
    _run(sam_model, image, box_prompt="[[5,5,40,40]]")
    assert embeddings.encoder_calls == before + 1
    _run(sam_model, _image(seed=3), point_prompt="[[20,20]]", point_label="[1]")
    assert embeddings.encoder_calls == before + 2  # another image is encoded
    embeddings.max_entries, saved = 1, embeddings.max_entries
    try:
        _run(sam_model, _image(seed=4), point_prompt="[[20,20]]", point_label="[1]")
        assert len(embeddings) == 1  # bounded: the least recently used went
    finally:
        embeddings.max_entries = saved


def test_batch_uses_per_image_prompts_and_outputs_fit_comfy(sam_model):
    image = _image(b=2, seed=5)
    out_image, mask, objects, boxes = _run(sam_model, image, point_prompt="[[[20,20]], [[100,60]]]", point_label="[[1],[1]]")
    assert out_image.shape == (2, H, W, 3) and mask.shape == (2, H, W) and mask.dtype == torch.float32
    assert objects.shape[1:] == (H, W) and isinstance(boxes, list) and len(boxes) == 2
    # every image gets exactly what a run on it alone with its own prompt gives
    alone = [_run(sam_model, image[i : i + 1], point_prompt=f"[{p}]", point_label="[1]")
             for i, p in enumerate(("[20,20]", "[100,60]"))]
    assert [len(b) for b in boxes] == [len(a[3][0]) for a in alone] == [1, 1]
    for i, (a_image, a_mask, a_objects, a_boxes) in enumerate(alone):
        assert torch.equal(out_image[i], a_image[0]), f"image {i}"
        assert torch.equal(mask[i], a_mask[0]), f"image {i}"
        assert boxes[i] == a_boxes[0], f"image {i}"
    assert torch.equal(objects, torch.cat([a[2] for a in alone]))
    assert not torch.equal(mask[0], mask[1])  # the two prompts select different regions


# ---------------------------------------------------------------- FastSAM vs ultralytics


@pytest.mark.parametrize(
    "widget,reference",
    [
        (dict(box_prompt="[[10,10,50,40]]"), dict(bboxes=[[10, 10, 60, 50]])),  # xywh → xyxy
        (dict(point_prompt="[[30,20],[90,60]]", point_label="[1,0]"), dict(points=[[30, 20], [90, 60]], labels=[1, 0])),
        (dict(), dict()),  # no prompt: everything
    ],
    ids=["box", "points", "everything"],
)
def test_fastsam_masks_equal_a_bare_ultralytics_call(fastsam_model, model_files, widget, reference):
    image = _image(seed=6)
    bare = FastSAM(str(model_files[1]))
    result = bare(np.ascontiguousarray(_u8(image)[..., ::-1]), imgsz=256, conf=0.001, iou=0.9, retina_masks=True,
                  device="cpu", verbose=False, **reference)[0]
    expected = (result.masks.data > 0.5) if result.masks is not None else torch.zeros((0, H, W), dtype=torch.bool)
    _, mask, objects, _ = _run(fastsam_model, image, confidence=0.001, **widget)
    assert len(expected) > 0
    assert torch.equal(mask[0].bool(), expected.any(0))
    got = {o.bool().numpy().tobytes() for o in objects}
    assert got == {e.numpy().tobytes() for e in expected}


def test_nothing_selected_gives_empty_masks_of_the_right_shape(sam_model):
    result = segment_with_prompts(sam_model, _image(), TinySamRequest(point_prompt="[[20,20]]", point_label="[1]", confidence=1.0))
    assert result.counts == [0]
    assert result.mask.shape == (1, H, W) and not result.mask.any()
    assert result.object_masks.shape == (1, H, W) and result.boxes == [[]]
