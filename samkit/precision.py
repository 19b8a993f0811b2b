"""The precision policy: which dtype a model runs in, and where fp32 is kept. One place, read whole.

A precision choice (``auto`` / ``fp32`` / ``fp16`` / ``bf16``) becomes a dtype at load
(:func:`resolve_dtype`, :func:`prepare_sam`). Every job that runs a model (``segmap`` and
``tiny_sam_job``, which the nodes, the self-hosted server's jobs and the CLI all call) enters
:func:`for_model` around its model work, per image, in the thread that runs the model (autocast
is per thread, and the server runs jobs on worker threads); painting and the outputs are made
outside it, in fp32. Nothing else in the pack sets up autocast.

**SAM family (SAM ViT, MobileSAM/TinySAM's TinyViT).** Weights are stored in the chosen dtype
(half precision halves their memory) and jobs run under ``torch.autocast`` in that dtype: matrix
products and convolutions run in half precision, and ops that mix fp32 inputs with half weights
are cast instead of failing (the issue's crash). Kept in fp32, with their fp32 values, and why
(numbers measured on the trained test fixture, bf16 against fp32, on the CPU):

* *Positional encoding of coordinates* (``PositionEmbeddingRandom``: prompt points, boxes and
  the dense grid the decoder attends with): ``sin``/``cos`` of ``2π·(coords @ G)`` with arguments
  up to ~30 rad. With 8 significant bits an argument of 30 moves by up to ~0.1 rad: the bf16
  encoding of the dense grid is off by up to 0.18 (of ±1; fp16: 0.025), which blurs where the
  prompt is. Kept fp32, it lowers the 99th percentile of the error of a 16x16 grid of clicks'
  predicted IoUs from 0.028 to 0.017 and of their low-resolution logits from 0.17 to 0.14; it
  costs nothing measurable (:class:`Fp32PositionEmbedding`).
* *Pixel normalisation constants* (``pixel_mean`` / ``pixel_std``): bf16 stores the mean 123.675
  as 123.5, a bias on every input pixel; three numbers each.
* *Predicted IoU* (the decoder's ``iou_prediction_head``, a small MLP on one token). It is
  compared with ``pred_iou_thresh`` and ``confidence`` and orders NMS; bf16 rounds it to steps of
  1/256 near 0.9, so 768 predictions had 530 distinct values (ties broken arbitrarily). In fp32,
  on fp32 weights, all were distinct; a few thousand multiply-adds per prompt (:class:`Fp32Head`).
* *Mask logits from the low-resolution masks on*: upsampling, the stability score (pixel counts
  at ``threshold ± offset``) and thresholding run in fp32 (:func:`fp32_island` and ``.float()``
  in ``automask`` / ``sam_prompted``): a logit near the threshold rounded to bf16 can change
  side. The decoder's low-resolution logits themselves stay a half-precision product (that is
  where its time goes): making that product fp32 was measured to change nothing that matters
  (low-resolution pixels whose sign differs from fp32: 0.044 % either way).

What half precision then leaves (``tests/testsupport/precision_matrix.py`` measures it on every
node): a click's mask within IoU 0.94 of fp32, a seg map with the same segments up to one or two
swapped at a threshold.

**SAM 2 / SAM 2.1** (``sam2_model.Sam2Image``): the same policy (:func:`prepare_sam2`). Kept in
fp32: the prompt encoder's positional encoding and the decoder's predicted-IoU head (the same
reasons as above; SAM 2 compares predicted IoU with ``pred_iou_thresh`` 0.8 and orders NMS by it),
the ImageNet normalisation (pixels are resized and normalised in fp32 before the encoder sees
them) and the logits from the low-resolution masks on.

**FastSAM** runs through ultralytics, which has fp32 and fp16 (``quantize=16``, formerly ``half``),
not bf16, and halves the weights itself; jobs run it with autocast *off*, so a host's autocast
cannot change what runs. :func:`fastsam_dtype` maps the request: fp16 and bf16 become fp16 on a
GPU (CUDA, and MPS, where ultralytics also runs fp16), fp32 on the CPU (where ultralytics runs
fp32 whatever it is asked). The loader logs the mapping and ``LoadedModel.dtype`` says what runs.

**fp16 on the CPU** is refused at load (CPU kernels for fp16 are missing or slower than fp32), by
a message that names the choices that work. ``auto`` is fp32 on the CPU, bf16 on CUDA GPUs that
support it, else fp16; fp16 on MPS.

**Devices without float64** (Apple MPS): the pack creates no float64 tensor (coordinates become
float32 or integers on the host first); ``tests/test_no_float64.py`` guards that.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: device types torch.autocast accepts; on others (e.g. DirectML) jobs run in the weights' dtype
_AUTOCAST_DEVICES = ("cuda", "cpu", "mps", "xpu")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype for a precision choice on ``device`` (see the module docstring).

    Raises ``ValueError`` for an unknown choice, and for fp16 on the CPU, naming what to choose.
    """
    if precision in _DTYPES:
        dtype = _DTYPES[precision]
        if torch.device(device).type == "cpu" and dtype == torch.float16:
            raise ValueError("precision fp16 is not supported on the CPU; choose 'auto', 'fp32' or 'bf16' "
                             "(or device 'gpu' for fp16).")
        return dtype
    if precision != "auto":
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "mps":
        return torch.float16
    return torch.float32


def fastsam_dtype(requested: torch.dtype, device: torch.device) -> torch.dtype:
    """What FastSAM (ultralytics: fp32 or fp16) really runs for a requested dtype on ``device``."""
    if requested == torch.float32 or torch.device(device).type == "cpu":
        return torch.float32
    return torch.float16


def fastsam_half_kwargs(dtype: torch.dtype) -> dict:
    """ultralytics' predict arguments for ``dtype``: ``quantize=16`` (8.4+) or the older ``half=True``."""
    if dtype != torch.float16:
        return {}
    from ultralytics.cfg import DEFAULT_CFG_DICT

    return {"quantize": 16} if "quantize" in DEFAULT_CFG_DICT else {"half": True}


class Fp32PositionEmbedding(PositionEmbeddingRandom):
    """segment-anything's ``PositionEmbeddingRandom``, computed in fp32 whatever autocast says.

    Same buffer name, so state dicts are unchanged; returns fp32 (callers cast to the decoder's dtype).
    """

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        with fp32_island(coords.device):
            return super()._pe_encoding(coords.float())


class Fp32Head(MLP):
    """segment-anything's decoder ``MLP`` run in fp32 on fp32 weights (the predicted-IoU head)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with fp32_island(x.device):
            return super().forward(x.float())


#: submodules of a ``Sam`` kept in fp32 in a half-precision model, and its fp32 buffers (see above)
FP32_MODULES = ("prompt_encoder.pe_layer", "mask_decoder.iou_prediction_head")
FP32_BUFFERS = ("pixel_mean", "pixel_std")


def _fp32_slots(sam: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """(owner module, attribute) of every tensor the policy keeps in fp32."""
    slots = [(sam, name) for name in FP32_BUFFERS]
    for prefix in FP32_MODULES:
        for module in sam.get_submodule(prefix).modules():
            slots += [(module, n) for n, _ in module.named_parameters(recurse=False)]
            slots += [(module, n) for n, _ in module.named_buffers(recurse=False)]
    return slots


def prepare_sam(sam: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast a segment-anything ``Sam`` to ``dtype``, keeping the fp32 parts of the policy in fp32.

    Changes ``sam`` in place (and returns it): the weights take ``dtype``, except the
    positional encoding, the pixel normalisation constants and the predicted-IoU head, which keep
    their fp32 values and compute in fp32. Parameter and buffer names are unchanged.
    """
    if dtype == torch.float32:
        return sam.float()
    kept = [(owner, name, getattr(owner, name).detach()) for owner, name in _fp32_slots(sam)]
    sam.to(dtype)
    for owner, name, tensor in kept:  # the fp32 originals back (not bf16 values widened again)
        current = getattr(owner, name)
        if isinstance(current, torch.nn.Parameter):
            current.data = tensor
        else:
            setattr(owner, name, tensor)  # a buffer: assigning to its name replaces it
    pe = sam.prompt_encoder.pe_layer
    if type(pe) is PositionEmbeddingRandom:
        pe.__class__ = Fp32PositionEmbedding  # same state, fp32 maths (the subclass adds no fields)
    head = sam.mask_decoder.iou_prediction_head
    if type(head) is MLP:
        head.__class__ = Fp32Head
    return sam


@functools.lru_cache(maxsize=None)
def _fp32_variant(cls: type, method: str) -> type:
    """A subclass of ``cls`` whose ``method`` (one tensor argument) runs in fp32 under autocast."""
    parent = getattr(cls, method)

    def run(self, x, *args):
        with fp32_island(x.device):
            return parent(self, x.float(), *args)

    return type(f"Fp32{cls.__name__}", (cls,), {method: run, "__doc__": f"{cls.__name__}, {method} in fp32"})


SAM2_FP32_MODULES = ("sam_prompt_encoder.pe_layer", "sam_mask_decoder.iou_prediction_head")


def prepare_sam2(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast a ``sam2_model.Sam2Image`` to ``dtype``, keeping the policy's fp32 parts (see above).

    In place; parameter and buffer names are unchanged (the fp32 modules change class only).
    """
    if dtype == torch.float32:
        return model.float()
    kept = {name: model.get_submodule(name) for name in SAM2_FP32_MODULES}
    saved = {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in kept.items()}
    buffers = {n: getattr(model, n).detach().clone() for n in FP32_BUFFERS}
    model.to(dtype)
    for name, module in kept.items():
        module.float().load_state_dict(saved[name])
        method = "_pe_encoding" if name.endswith("pe_layer") else "forward"
        module.__class__ = _fp32_variant(type(module), method)
    for n, value in buffers.items():
        setattr(model, n, value)
    return model


def fp32_island(device: torch.device):
    """Autocast off on ``device`` for a block whose inputs the caller has made fp32."""
    kind = torch.device(device).type
    if kind not in _AUTOCAST_DEVICES:
        return contextlib.nullcontext()
    return torch.autocast(device_type=kind, enabled=False)


def _autocast(device: torch.device, dtype: torch.dtype):
    kind = torch.device(device).type
    if kind not in _AUTOCAST_DEVICES:
        return contextlib.nullcontext()
    if dtype == torch.float32:
        return torch.autocast(device_type=kind, enabled=False)
    return torch.autocast(device_type=kind, dtype=dtype)


@contextlib.contextmanager
def for_model(model):
    """The policy for ``model`` (a ``LoadedModel``): jobs enter it around their model work.

    Half-precision SAM-family models run under autocast in their dtype; fp32 models and FastSAM
    (whose dtype ultralytics sets) run with autocast off, so an autocast left on by the host cannot
    change what runs. Autocast is per thread: enter it in the thread that runs the model.
    """
    dtype = model.dtype if (model.is_sam or model.is_sam2) else torch.float32
    with _autocast(model.device, dtype):
        yield
