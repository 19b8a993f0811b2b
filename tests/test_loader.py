"""Loading checkpoints of the real architectures through the pack's loader."""

import shutil

import pytest
import torch

from comfyui_sam_kit.nodes.model_loader import SamKitModelLoader
from comfyui_sam_kit.samkit import catalogue, loader
from comfyui_sam_kit.samkit.loader import DamagedCheckpoint, UnsupportedCheckpoint, detect_sam_config
from testsupport.checkpoints import build_small_sam, build_vit_t_sam, save_fastsam_checkpoint, save_sam_checkpoint


@pytest.fixture(autouse=True)
def _fresh_cache():
    loader.clear_cache()
    yield
    loader.clear_cache()


def _masks(sam, image):
    import numpy as np

    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(point_coords=np.array([[40, 30]]), point_labels=np.array([1]), multimask_output=True, return_logits=True)
    return masks, scores


def test_renamed_small_sam_loads_and_computes_the_same_masks(_isolated_model_dir):
    import numpy as np

    sam = build_small_sam(seed=3)
    # a name that suggests another model: the loader must not care
    save_sam_checkpoint(sam, _isolated_model_dir / "sam_vit_h_4b8939_finetune.pth")
    loaded = loader.load_model("sam_vit_h_4b8939_finetune.pth", device="cpu")
    assert loaded.family == "sam" and loaded.arch == "vit_custom"
    image = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype("uint8")
    a, sa = _masks(sam, image)
    b, sb = _masks(loaded.runner, image)
    assert np.array_equal(a, b) and np.array_equal(sa, sb)


@pytest.mark.parametrize(
    "embed_dim,depth,heads,globals_,arch",
    [(768, 12, 12, [2, 5, 8, 11], "vit_b"), (1024, 24, 16, [5, 11, 17, 23], "vit_l"), (1280, 32, 16, [7, 15, 23, 31], "vit_h")],
)
def test_full_size_configs_are_read_from_shapes(embed_dim, depth, heads, globals_, arch):
    # Build the real architecture on the meta device: shapes without 1-2.5 GB of weights.
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        sam = sam_model_registry[arch]()
    config = detect_sam_config(sam.state_dict())
    kw = dict(config.encoder_kwargs)
    assert config.arch == arch
    assert (kw["embed_dim"], kw["depth"], kw["num_heads"]) == (embed_dim, depth, heads)
    assert list(kw["global_attn_indexes"]) == globals_ and kw["window_size"] == 14 and kw["img_size"] == 1024


def test_vit_t_mobilesam_layout_loads_strictly(_isolated_model_dir):
    sam = build_vit_t_sam(seed=1)
    path = save_sam_checkpoint(sam, _isolated_model_dir / "weights.pt")
    loaded = loader.load_model(str(path), device="cpu")
    assert loaded.arch == "vit_t"
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        assert torch.equal(sam.image_encoder(x), loaded.runner.image_encoder(x))


def test_fastsam_checkpoint_loads_through_ultralytics(_isolated_model_dir):
    save_fastsam_checkpoint(_isolated_model_dir / "my-fastsam.pt")
    loaded = loader.load_model("my-fastsam.pt", device="cpu")
    assert loaded.family == "fastsam" and loaded.runner.task == "segment"


def test_wrong_family_is_named(_isolated_model_dir):
    classifier = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    classifier(torch.zeros(1, 3, 8, 8))
    torch.save(classifier.state_dict(), _isolated_model_dir / "resnet.pth")
    with pytest.raises(UnsupportedCheckpoint, match="not a Segment Anything checkpoint.*found keys like: 0.bias"):
        loader.load_model("resnet.pth", device="cpu")
    sam2_like = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(1), "sam_mask_decoder.x": torch.zeros(1)}
    torch.save(sam2_like, _isolated_model_dir / "sam2.pt")
    with pytest.raises(UnsupportedCheckpoint, match="SAM 2"):
        loader.load_model("sam2.pt", device="cpu")


def test_truncated_file_says_it_is_damaged(_isolated_model_dir):
    good = save_sam_checkpoint(build_small_sam(), _isolated_model_dir / "good.pth")
    data = good.read_bytes()
    (_isolated_model_dir / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedCheckpoint, match="damaged or incomplete.*download it again"):
        loader.load_model("cut.pth", device="cpu")


def test_unknown_missing_model_lists_where_it_looked(_isolated_model_dir):
    with pytest.raises(FileNotFoundError, match=str(_isolated_model_dir)):
        loader.load_model("nothing-here.pth", device="cpu")


def test_second_load_reads_nothing_and_keys_separate_settings(_isolated_model_dir):
    save_sam_checkpoint(build_small_sam(), _isolated_model_dir / "a.pth")
    before = loader.load_count
    first = loader.load_model("a.pth", device="cpu", precision="fp32")
    again = loader.load_model("a.pth", device="cpu", precision="fp32")
    assert again is first and loader.load_count == before + 1
    bf16 = loader.load_model("a.pth", device="cpu", precision="bf16")
    assert bf16 is not first and bf16.dtype == torch.bfloat16 and loader.load_count == before + 2
    # the file changed on disk: load it again
    shutil.copy(_isolated_model_dir / "a.pth", _isolated_model_dir / "b.pth")
    save_sam_checkpoint(build_small_sam(seed=9), _isolated_model_dir / "a.pth")
    changed = loader.load_model("a.pth", device="cpu", precision="fp32")
    assert changed is not first and loader.load_count == before + 3


def test_fp16_on_cpu_is_refused_clearly(_isolated_model_dir):
    save_sam_checkpoint(build_small_sam(), _isolated_model_dir / "a.pth")
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        loader.load_model("a.pth", device="cpu", precision="fp16")


def test_loader_node_lists_present_then_known_models(_isolated_model_dir):
    save_sam_checkpoint(build_small_sam(), _isolated_model_dir / "sub" / "mine.pth")
    (_isolated_model_dir / ".partial.pth.part").write_bytes(b"x")
    (_isolated_model_dir / "notes.txt").write_text("x")
    choices = SamKitModelLoader.INPUT_TYPES()["required"]["model_name"][0]
    assert choices[0] == "sub/mine.pth"
    assert choices[1:] == [m.file_name for m in catalogue.KNOWN_MODELS]
    (model,) = SamKitModelLoader().load("sub/mine.pth", "cpu", "auto")
    assert model.family == "sam" and model.dtype == torch.float32
