"""Model files are read by their contents under any listed name; every file that cannot be
loaded gives one clear error naming it, what it looks like and what to do.

Members of the "unusable file" kind are in testsupport.bad_models; each is tried under every
extension the loader lists and under the pack's known model names (whose errors must give the
download URL and the folder).
"""

import shutil
import sys

import numpy as np
import pytest
import torch

from comfyui_sam_kit.nodes.model_loader import SamKitModelLoader
from comfyui_sam_kit.samkit import catalogue, loader, model_files, model_folders
from comfyui_sam_kit.samkit.fastsam import predict_everything
from comfyui_sam_kit.samkit.model_errors import ModelFileError
from testsupport.bad_models import MEMBERS
from testsupport.checkpoints import build_small_sam, save_sam_checkpoint
from testsupport.trained import heldout_scene
from testsupport.trained_fastsam import TRAINED_FASTSAM_PATH

EXTENSIONS = model_folders.MODEL_EXTENSIONS
KNOWN = ("sam_vit_b_01ec64.pth", "mobile_sam.pt", "FastSAM-s.pt", "tinysam_42.3.pth")
NAMES = [f"my_model{ext}" for ext in EXTENSIONS] + list(KNOWN)


@pytest.fixture(autouse=True)
def _fresh_cache():
    loader.clear_cache()
    yield
    loader.clear_cache()


def _assert_clear(error: BaseException, path, words: str):
    message = str(error)
    assert isinstance(error, ModelFileError)
    assert str(path) in message and words in message, message
    known = catalogue.known_model(path.name)
    if known is not None:  # what to do: the official URL and the folder it goes in
        assert known.url in message and f"put it in {path.parent}" in message, message
    else:
        assert "download it again" in message or "SAM Kit loads" in message, message
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    assert "Traceback" not in message and "❌" not in message


@pytest.mark.parametrize("file_name", NAMES)
@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_every_unusable_file_gets_one_clear_error_under_every_name(member, file_name, _isolated_model_dir):
    write, error_class, words = MEMBERS[member]
    path = _isolated_model_dir / file_name
    write(path)
    with pytest.raises(ModelFileError) as info:
        loader.load_model(file_name, device="cpu")
    assert type(info.value).__name__ == error_class
    _assert_clear(info.value, path, words)


@pytest.mark.parametrize("member", ["html page", "truncated safetensors", "sam 2 keys", "ultralytics detection model"])
def test_the_loader_node_shows_the_same_message(member, _isolated_model_dir):
    write, _cls, words = MEMBERS[member]
    path = _isolated_model_dir / "sub" / "mobile_sam.pt"
    path.parent.mkdir()
    write(path)
    with pytest.raises(ModelFileError) as direct:
        loader.load_model(str(path), device="cpu")
    with pytest.raises(ModelFileError) as node:
        SamKitModelLoader().load("sub/mobile_sam.pt", "cpu", "auto")
    assert str(node.value) == str(direct.value) and type(node.value) is type(direct.value)
    _assert_clear(node.value, path, words)


@pytest.mark.parametrize("file_name", ["my_model.pth", "sam_vit_h_4b8939.pth"])
def test_a_folder_named_like_a_model_is_named_as_a_folder(file_name, _isolated_model_dir):
    (_isolated_model_dir / file_name).mkdir()
    with pytest.raises(ModelFileError, match=f"{_isolated_model_dir / file_name} is a folder, not a model file"):
        loader.load_model(file_name, device="cpu")
    with pytest.raises(ModelFileError, match="is a folder"):
        SamKitModelLoader().load(file_name, "cpu", "auto")


def test_safetensors_without_the_package_says_how_to_install_it(_isolated_model_dir, monkeypatch):
    from safetensors.torch import save_file

    path = _isolated_model_dir / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in build_small_sam().state_dict().items()}, str(path))
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # what a Python without the package sees
    with pytest.raises(ModelFileError, match=r"weights\.safetensors is a safetensors file.*pip install safetensors"):
        loader.load_model("weights.safetensors", device="cpu")


def test_download_check_names_what_the_file_is(_isolated_model_dir):
    from comfyui_sam_kit.samkit.download import DownloadError, verify_checkpoint_file

    for member, words in [("html page", "HTML page"), ("truncated safetensors", "safetensors file is damaged"),
                          ("truncated torch zip", "cut short"), ("png image", "PNG image")]:
        path = _isolated_model_dir / "x.pth"
        MEMBERS[member][0](path)
        with pytest.raises(DownloadError, match=words):
            verify_checkpoint_file(path)


# ---------------------------------------------------------------- the architecture comes from the contents


def _sam_masks(model, image):
    from comfyui_sam_kit.samkit.prompts import ImagePrompts
    from comfyui_sam_kit.samkit.sam_prompted import segment_prompted

    found = segment_prompted(model, image, ImagePrompts(points=((40.0, 30.0),), labels=(1,)), confidence=0.0)
    return found.masks.numpy(), found.scores.numpy()


@pytest.mark.parametrize("file_name", NAMES)
@pytest.mark.parametrize("fmt", ["torch zip", "safetensors", "legacy torch"])
def test_a_sam_checkpoint_loads_in_any_format_under_any_name(fmt, file_name, _isolated_model_dir, tmp_path):
    from safetensors.torch import save_file

    sam = build_small_sam(seed=2)
    reference = loader.load_model(str(save_sam_checkpoint(sam, tmp_path / "reference.pth")), device="cpu")
    path = _isolated_model_dir / file_name
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, str(path))
    else:
        torch.save(sam.state_dict(), path, _use_new_zipfile_serialization=(fmt == "torch zip"))
    loaded = loader.load_model(file_name, device="cpu")
    assert loaded.family == "sam" and loaded.path == str(path)
    image = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    (a, sa), (b, sb) = _sam_masks(reference, image), _sam_masks(loaded, image)
    assert np.array_equal(a, b) and np.array_equal(sa, sb)


@pytest.fixture(scope="module")
def fastsam_reference():
    image = heldout_scene(0).image
    model = loader.load_model(str(TRAINED_FASTSAM_PATH), device="cpu")
    found = predict_everything(model, image, size=256)
    assert len(found) > 1  # a real comparison: the fixture finds the scene's shapes
    return image, found


@pytest.mark.parametrize("file_name", NAMES + ["FastSAM-x.pt", "sam_vit_h_4b8939.pth", "weights.PTH", "it's fast?sam%20.pt"])
def test_fastsam_loads_under_any_name_and_segments_as_the_pt(file_name, _isolated_model_dir, fastsam_reference):
    image, expected = fastsam_reference
    path = _isolated_model_dir / file_name
    shutil.copyfile(TRAINED_FASTSAM_PATH, path)
    before = sorted(p.name for p in _isolated_model_dir.iterdir())
    loaded = loader.load_model(file_name, device="cpu")
    assert loaded.family == "fastsam" and loaded.runner.task == "segment" and loaded.path == str(path)
    assert loaded.runner.ckpt_path == str(path)  # the runner points at the file itself, not a temporary alias
    found = predict_everything(loaded, image, size=256)
    assert torch.equal(found.masks, expected.masks) and torch.equal(found.scores, expected.scores)
    assert sorted(p.name for p in _isolated_model_dir.iterdir()) == before  # nothing written beside the model


def test_fastsam_under_another_name_is_linked_not_copied(_isolated_model_dir, monkeypatch):
    # the .pt alias ultralytics needs is a symbolic link where the system allows one
    import os

    made = []
    real_symlink = os.symlink
    monkeypatch.setattr(os, "symlink", lambda src, dst: (made.append((str(src), str(dst))), real_symlink(src, dst))[1])
    shutil.copyfile(TRAINED_FASTSAM_PATH, _isolated_model_dir / "fast.bin")
    model_files.load_fastsam(_isolated_model_dir / "fast.bin")
    assert len(made) == 1 and made[0][0] == str((_isolated_model_dir / "fast.bin").resolve())
    assert made[0][1].endswith(".pt") and not os.path.exists(made[0][1])  # the temporary folder is gone
