"""The Tiny SAM editor's live preview (samkit/preview.py), without ComfyUI.

What it must give: exactly the node's objects for the same prompts (masks, order, colours), on
the same model object and embedding cache as the node, running the image encoder once per image;
and refusals, each with a message, of everything a widget could not hold or a request should not
cost: paths outside /view's folders, models not in Load SAM Model's list, oversized images and
prompt lists. Runs on the trained fixtures (tests/testmodels/), which really segment the shapes
scenes, so "the preview equals the node" compares real, non-empty masks.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_sam_kit.samkit import loader
from comfyui_sam_kit.samkit.embedding_cache import embeddings
from comfyui_sam_kit.samkit.images import from_uint8_rgb, png_bytes, read_image
from comfyui_sam_kit.samkit.preview import Previewer, PreviewError
from comfyui_sam_kit.samkit.tiny_sam_job import TinySamRequest, segment_with_prompts
from testsupport.trained import TRAINED_SAM_PATH, heldout_scene, interior_point
from testsupport.trained_fastsam import FASTSAM_SETTINGS, TRAINED_FASTSAM_PATH

SAM, FASTSAM = TRAINED_SAM_PATH.name, TRAINED_FASTSAM_PATH.name


@pytest.fixture
def setup(tmp_path, _isolated_model_dir):
    shutil.copy(TRAINED_SAM_PATH, _isolated_model_dir / SAM)
    shutil.copy(TRAINED_FASTSAM_PATH, _isolated_model_dir / FASTSAM)
    folders = {kind: tmp_path / kind for kind in ("input", "output", "temp")}
    for folder in folders.values():
        folder.mkdir()
    scene = heldout_scene(1)
    (folders["input"] / "scene.png").write_bytes(png_bytes(scene.image))
    (folders["input"] / "sub").mkdir()
    (folders["input"] / "sub" / "scene.png").write_bytes(png_bytes(scene.image))
    loader.clear_cache()
    embeddings.clear()
    yield folders, scene
    loader.clear_cache()
    embeddings.clear()


def body(model=SAM, image=None, **prompts) -> dict:
    out = {"node": "client:1", "model": {"model_name": model, "device": "cpu", "precision": "auto"},
           "image": image or {"filename": "scene.png", "subfolder": "", "type": "input"},
           "size": 1024, "confidence": 0.4, "iou": 0.9,
           "box_prompt": "[[0,0,0,0]]", "point_prompt": "[[0,0]]", "point_label": "[0]"}
    out.update({k: json.dumps(v, separators=(",", ":")) if not isinstance(v, str) else v for k, v in prompts.items()})
    return out


def previewer(folders, **kw) -> Previewer:
    return Previewer(lambda: {k: str(v) for k, v in folders.items()}, **kw)


def masks_of(answer) -> np.ndarray:
    """The answer's objects as full-size bool masks [N,H,W]."""
    h, w = answer["height"], answer["width"]
    out = np.zeros((len(answer["objects"]), h, w), dtype=bool)
    for i, obj in enumerate(answer["objects"]):
        x0, y0, x1, y1 = obj["box"]
        with Image.open(io.BytesIO(base64.b64decode(obj["png"]))) as im:
            assert im.mode == "P" and im.getpalette()[3:6] == obj["colour"] and im.info["transparency"] == 0
            crop = np.asarray(im) > 0  # palette indices: 1 = mask, in its colour; 0 transparent
        assert crop.shape == (y1 - y0 + 1, x1 - x0 + 1)
        out[i, y0 : y1 + 1, x0 : x1 + 1] = crop
    return out


def painted(image: np.ndarray, answer) -> torch.Tensor:
    """The answer painted as the editor paints it: opaque colours in paint order, blended once at alpha."""
    layer = np.full(image.shape[:2], -1)
    for i, mask in zip(answer["paint_order"], masks_of(answer)[answer["paint_order"]]):
        layer[mask] = i
    colours = np.array([o["colour"] for o in answer["objects"]] + [[0, 0, 0]], dtype=np.float32) / 255.0
    base = from_uint8_rgb(image)[0]
    tint = torch.from_numpy(colours[layer])
    a = answer["alpha"]
    return torch.where(torch.from_numpy(layer >= 0)[..., None], base * (1 - a) + tint * a, base)


def node_run(model_name, image: np.ndarray, **prompts):
    model = loader.load_model(model_name, device="cpu", folders_only=True)
    texts = {k: json.dumps(v, separators=(",", ":")) for k, v in prompts.items()}
    size = FASTSAM_SETTINGS["imgsz"] if model.is_fastsam else 1024
    return segment_with_prompts(model, from_uint8_rgb(image), TinySamRequest(size=size, **texts))


@pytest.mark.parametrize("model_name", [SAM, FASTSAM])
def test_preview_gives_the_nodes_masks_and_colours(setup, model_name):
    folders, scene = setup
    first, second = interior_point(scene.masks[0]), interior_point(scene.masks[1])
    x0, y0, x1, y1 = scene.boxes_xyxy[2].tolist()
    prompts = dict(point_prompt=[list(first), list(second)], point_label=[1, 0],
                   box_prompt=[[x0, y0, x1 - x0 + 1, y1 - y0 + 1]])
    request = body(model_name, **prompts)
    if model_name == FASTSAM:
        request.update(size=FASTSAM_SETTINGS["imgsz"], confidence=FASTSAM_SETTINGS["conf"])
    answer = previewer(folders).preview(request)
    assert answer["objects"], "the fixture finds the clicked and boxed shapes"
    result = node_run(model_name, read_image(folders["input"] / "scene.png"), **prompts)
    assert result.counts == [len(answer["objects"])]
    assert np.array_equal(masks_of(answer), result.object_masks.bool().numpy())
    assert [o["score"] for o in answer["objects"]] == [b["score"] for b in result.boxes[0]]
    # the node's combined image is the preview painted with its colours, in its order (float equality:
    # the same arithmetic on the same values)
    assert torch.equal(painted(scene.image, answer), result.image[0])


def test_encoder_runs_once_per_image_and_the_node_reuses_it(setup):
    folders, scene = setup
    preview = previewer(folders)
    calls = embeddings.encoder_calls
    click = list(interior_point(scene.masks[0]))
    first = preview.preview(body(point_prompt=[click], point_label=[1]))
    assert first["encoded"] and embeddings.encoder_calls == calls + 1
    second = preview.preview(body(point_prompt=[click, list(interior_point(scene.masks[3]))], point_label=[1, 0]))
    third = preview.preview(body(image={"filename": "scene.png", "subfolder": "sub", "type": "input"},
                                 box_prompt=[[5, 5, 100, 100]]))  # the same pixels from another file
    assert not second["encoded"] and not third["encoded"]
    node_run(SAM, read_image(folders["input"] / "scene.png"), point_prompt=[click], point_label=[1])
    assert embeddings.encoder_calls == calls + 1, "the node's run encoded the image the preview had encoded"
    assert loader.load_count >= 1 and len(loader.cached_models()) == 1, "the preview and the node share one model"


@pytest.mark.parametrize("image, words", [
    ({"filename": "../scene.png", "subfolder": "", "type": "input"}, "bare file name"),
    ({"filename": "sub/scene.png", "subfolder": "", "type": "input"}, "bare file name"),
    ({"filename": "scene.png", "subfolder": "..", "type": "input"}, "inside the input folder"),
    ({"filename": "scene.png", "subfolder": "sub/../../input", "type": "input"}, "inside the input folder"),
    ({"filename": "passwd", "subfolder": "/etc", "type": "input"}, "inside the input folder"),
    ({"filename": "scene.png", "subfolder": "", "type": "models"}, "not one of input, output, temp"),
    ({"filename": "scene.png", "subfolder": "", "type": "output"}, "not in the output folder"),
    ("scene.png", "filename, subfolder, type"),
])
def test_image_references_outside_views_rules_are_refused(setup, image, words):
    folders, _ = setup
    with pytest.raises(PreviewError) as err:
        previewer(folders).preview(body(image=image, point_prompt=[[10, 10]], point_label=[1]))
    assert words in err.value.message
    assert err.value.status in (400, 404)


def test_models_outside_the_loaders_list_are_refused(setup):
    folders, _ = setup
    preview = previewer(folders)
    loads = loader.load_count
    for name, words, status in (("nope.pth", "not in Load SAM Model's list", 400),
                                ("../sams/" + SAM, "not in Load SAM Model's list", 400),
                                ("mobile_sam.pt", "not downloaded yet", 409)):
        with pytest.raises(PreviewError) as err:
            preview.preview(body(name, point_prompt=[[10, 10]], point_label=[1]))
        assert words in err.value.message and repr(name) in err.value.message
        assert err.value.status == status
    with pytest.raises(PreviewError) as err:  # the loader's own refusal, passed on readably
        preview.preview({**body(point_prompt=[[10, 10]], point_label=[1]),
                         "model": {"model_name": SAM, "device": "cpu", "precision": "fp16"}})
    assert "cannot load" in err.value.message and "fp16" in err.value.message
    assert loader.load_count == loads, "a refused preview loaded a model"


def test_work_is_bounded(setup):
    folders, _ = setup
    with pytest.raises(PreviewError, match="at most 100 pixels"):
        previewer(folders, max_pixels=100).preview(body(point_prompt=[[10, 10]], point_label=[1]))
    with pytest.raises(PreviewError, match="at most 2 points and 1 boxes"):
        previewer(folders, max_points=2, max_boxes=1).preview(body(point_prompt=[[1, 1], [2, 2], [3, 3]], point_label=[1, 1, 1]))
    with pytest.raises(PreviewError, match="too long"):
        previewer(folders).preview(body(point_prompt="[" + "[1,1]," * 5000 + "[1,1]]"))
    with pytest.raises(PreviewError, match="point_label"):  # the node's own prompt checks
        previewer(folders).preview(body(point_prompt=[[10, 10]], point_label=[1, 0]))
    with pytest.raises(PreviewError) as err:
        previewer(folders, busy=lambda: "a workflow is running").preview(body(point_prompt=[[10, 10]], point_label=[1]))
    assert err.value.status == 409 and err.value.retry and "a workflow is running" in err.value.message


def test_no_prompt_and_sam_background_points_run_nothing(setup):
    folders, _ = setup
    preview = previewer(folders)
    loads, calls = loader.load_count, embeddings.encoder_calls
    assert preview.preview(body())["objects"] == []
    assert loader.load_count == loads  # no prompt: not even the model is needed
    answer = preview.preview(body(point_prompt=[[10, 10]], point_label=[0]))
    assert answer["objects"] == [] and "background points" in answer["note"]
    assert embeddings.encoder_calls == calls


def test_a_newer_request_for_the_same_editor_supersedes_a_waiting_one(setup):
    folders, scene = setup
    gate = threading.Event()

    def slow_load(name, device, prec):  # holds the preview lock until the test lets it go
        gate.wait(20)
        return loader.load_model(name, device=device, precision=prec, folders_only=True)

    preview = previewer(folders, load=slow_load)
    click = {"point_prompt": [list(interior_point(scene.masks[0]))], "point_label": [1]}
    answers = {}

    def run(name, key):
        answers[name] = preview.preview({**body(**click), "node": key})

    threads = [threading.Thread(target=run, args=("other", "client:9"))]
    threads[0].start()
    for name in ("older", "newer"):  # one after the other, each waiting behind "other"
        count = preview._count
        threads.append(threading.Thread(target=run, args=(name, "client:1")))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while preview._count == count and time.monotonic() < deadline:
            time.sleep(0.01)
    gate.set()
    for t in threads:
        t.join(60)
    assert answers["older"] == {"superseded": True}
    assert answers["newer"]["objects"] and answers["other"]["objects"]
