"""Files that are not loadable SAM/FastSAM checkpoints, as users end up with them.

``MEMBERS``: ``{name: (write(path), error class name, words the message must contain)}``. Each
``write`` puts that kind of file at ``path`` whatever its extension; the loader must refuse it
with that ``samkit.model_files`` error, naming the path and saying what the file looks like.
Built once per process where building is slow (``_small_sam_state``).
"""

from __future__ import annotations

import functools
import io
import pickle
import zipfile
from pathlib import Path

import torch

from testsupport.checkpoints import build_small_sam


@functools.lru_cache(maxsize=1)
def _small_sam_state() -> dict:
    return {k: v.clone() for k, v in build_small_sam(seed=1).state_dict().items()}


@functools.lru_cache(maxsize=1)
def _torch_zip_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save(_small_sam_state(), buf)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def _safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in _small_sam_state().items()})


def _write(data: bytes):
    return lambda path: Path(path).write_bytes(data)


def _torch_save(obj):
    return lambda path: torch.save(obj, path)


def _truncated_torch_zip(path):
    data = _torch_zip_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def _corrupt_member(path):
    # overwrite the pickle member's bytes: the zip's directory is intact, that member's CRC is not
    data = bytearray(_torch_zip_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 2 : start + info.compress_size] = bytes([0xFF]) * (info.compress_size - 2)
    Path(path).write_bytes(bytes(data))


def _truncated_safetensors(path):
    data = _safetensors_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def _resnet(path):
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.save(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=2).half().state_dict(), path)


def _hq_sam(path):
    state = dict(_small_sam_state())
    state["mask_decoder.hf_token.weight"] = torch.zeros(1, 256)
    state["mask_decoder.hf_mlp.layers.0.weight"] = torch.zeros(256, 256)
    torch.save(state, path)


def _sam2(path):
    keys = ["image_encoder.trunk.patch_embed.proj.weight", "image_encoder.neck.convs.0.conv.weight",
            "memory_attention.layers.0.self_attn.q_proj.weight", "sam_mask_decoder.iou_token.weight",
            "sam_prompt_encoder.point_embeddings.0.weight"]
    torch.save({"model": {k: torch.zeros(4, 4) for k in keys}}, path)  # SAM 2 nests its state under "model"


def _hf_transformers_sam(path):
    keys = ["vision_encoder.patch_embed.projection.weight", "prompt_encoder.shared_embedding.positional_embedding",
            "mask_decoder.iou_token.weight"]
    torch.save({k: torch.zeros(2, 2) for k in keys}, path)


def _partial_sam(path):
    state = dict(_small_sam_state())
    del state["image_encoder.pos_embed"]
    torch.save(state, path)


def _fastsam_detection_model(path):
    # an ultralytics *detection* YOLO (no mask head), saved the way ultralytics' trainer saves
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG_DICT

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=1, verbose=False)
    torch.save({"epoch": -1, "model": model.half(), "ema": None, "optimizer": None,
                "train_args": {**DEFAULT_CFG_DICT, "task": "detect"}, "version": "8.4.190"}, path)


def _torchscript(path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))


def _zip_of_other_things(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not weights")


MEMBERS = {
    "empty": (_write(b""), "DamagedCheckpoint", "is empty (0 bytes)"),
    "random bytes": (_write(bytes(range(7, 256)) * 40), "DamagedCheckpoint", "not in a model format"),
    "html page": (_write(b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not Found</body></html>"),
                  "DamagedCheckpoint", "HTML page"),
    "text file": (_write(b"model weights go here\n"), "DamagedCheckpoint", "text file"),
    "git lfs pointer": (_write(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 375042383\n"),
                        "DamagedCheckpoint", "Git LFS pointer"),
    "png image": (_write(b"\x89PNG\r\n\x1a\n" + bytes(64)), "UnsupportedCheckpoint", "PNG image"),
    "truncated torch zip": (_truncated_torch_zip, "DamagedCheckpoint", "damaged or incomplete"),
    "corrupt torch zip member": (_corrupt_member, "DamagedCheckpoint", "fails its CRC check"),
    "truncated safetensors": (_truncated_safetensors, "DamagedCheckpoint", "safetensors file that is damaged"),
    "torch pickle of non-tensors": (_torch_save({"epoch": 3, "classes": ["a", "b"]}), "UnsupportedCheckpoint",
                                    "other than tensors"),
    "plain python pickle": (_write(pickle.dumps({"weights": [1.0, 2.0]})), "UnsupportedCheckpoint",
                            "plain Python pickle"),
    "pickled whole module": (_torch_save(torch.nn.Linear(2, 2)), "UnsupportedCheckpoint", "pickled Python objects"),
    "single tensor": (_torch_save(torch.zeros(3)), "UnsupportedCheckpoint", "single tensor"),
    "torchvision resnet state dict": (_resnet, "UnsupportedCheckpoint", "not a Segment Anything checkpoint"),
    "hq-sam keys": (_hq_sam, "UnsupportedCheckpoint", "HQ-SAM"),
    "sam 2 keys": (_sam2, "UnsupportedCheckpoint", "SAM 2"),
    "transformers sam keys": (_hf_transformers_sam, "UnsupportedCheckpoint", "transformers"),
    "partial sam": (_partial_sam, "UnsupportedCheckpoint", "not a complete SAM checkpoint"),
    "ultralytics detection model": (_fastsam_detection_model, "UnsupportedCheckpoint", "ultralytics detect model"),
    "torchscript archive": (_torchscript, "UnsupportedCheckpoint", "TorchScript"),
    "zip of other things": (_zip_of_other_things, "UnsupportedCheckpoint", "zip archive that is not"),
}
