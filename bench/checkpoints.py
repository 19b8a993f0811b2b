"""Checkpoints for the benchmarks: the real architectures with synthetic weights, saved as real files.

No real weights exist on the benchmark machine (and nothing can be downloaded), so every
model is built from segment-anything's / ultralytics' own classes and saved the way the
published files are; the pack then loads them with its normal loader.

Untrained weights are fine for timing the networks but not for timing what comes after them:
SAM's post-processing cost depends on how many masks pass the quality filters and on what the
masks look like (the reference run-length-encodes every surviving mask on the CPU, so a
noisy mask costs far more than an object-shaped one). A randomly initialised SAM predicts
IoU ≈ 0 (nothing passes), and its masks are pixel checkerboards from the random transposed
convolutions. So the SAM checkpoints are *calibrated* (:func:`calibrate_sam_decoder`):

1. the two ``ConvTranspose2d`` layers of the decoder's upscaler get the same weights for all
   four kernel taps (plain nearest-neighbour upsampling + channel mixing: no checkerboard);
2. the last linear layer of each mask token's hypernetwork MLP is fitted by ridge regression
   (closed form) so that the mask for a point on the benchmark image approximates the scene
   object under that point (token 1: the part of it near the point, tokens 0/2: the object,
   token 3: the object with the objects touching its box) with logits of ±``amplitude``;
3. the last layer of the IoU head is fitted to the IoU those masks reach, then shifted so that
   ``iou_pass_fraction`` of the multimask outputs score above SAM's default 0.88.

Everything else (encoder, prompt encoder, the decoder's transformer) keeps its random weights,
so the compute is exactly that of the real architecture. The decoder then behaves like a
(mediocre) trained SAM on that image: masks are object-like blobs around the prompt, a
realistic share passes the filters, and NMS leaves tens of segments.

FastSAM (:func:`fastsam_checkpoint`): ultralytics ``yolov8{n,s,x}-seg.yaml`` with one class,
saved in the dict format ultralytics' trainer writes (what FastSAM-s.pt is). Its class biases
are shifted so that about ``detections`` anchors pass the confidence threshold on the
benchmark image (untrained, none would).

The architectures and file formats themselves come from tools/synthetic_checkpoints.py, which
the tests share (``build_random_sam``, ``build_random_fastsam`` and ``SAM_ARCHS`` are re-exported here).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import common  # noqa: F401  (first: it puts the repo root and tools/ on sys.path)
from .scenes import Scene

# tools/synthetic_checkpoints.py, shared with the tests; importable once ``common`` ran
from synthetic_checkpoints import (  # isort: skip
    SAM_ARCHS,
    build_random_fastsam,
    build_random_sam,
    save_fastsam_model,
    save_sam_checkpoint,
)

__all__ = ["SAM_ARCHS", "CALIBRATION_VERSION", "build_random_sam", "fit_encoder_neck", "calibrate_sam_decoder",
           "sam_checkpoint", "build_random_fastsam", "calibrate_fastsam", "fastsam_checkpoint"]

#: bump when calibration changes, so cached files are rebuilt
CALIBRATION_VERSION = 1


# ------------------------------------------------------------------ SAM


def _lowres_labels(scene: Scene, input_size: tuple, encoder_size: int, grid: int) -> torch.Tensor:
    """The label map in the decoder's frame (resized like the image, padded with -1) at ``grid``²."""
    t = torch.as_tensor(scene.labels, dtype=torch.float32)[None, None]
    t = F.interpolate(t, input_size, mode="nearest")
    t = F.pad(t, (0, encoder_size - input_size[1], 0, encoder_size - input_size[0]), value=-1)
    return F.interpolate(t, (grid, grid), mode="nearest")[0, 0].to(torch.int64)


def _targets(scene: Scene, lowres: torch.Tensor, points: np.ndarray, scale: float, grid: int) -> list[torch.Tensor]:
    """Per mask token, the bool target ``[N, grid, grid]`` for each fit point."""
    boxes = scene.object_boxes()
    yy, xx = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    radius = 0.15 * min(scene.labels.shape) * scale
    obj_t, part_t, group_t = [], [], []
    for x, y in points:
        k = int(scene.labels[int(y), int(x)])
        obj = lowres == k
        px, py = x * scale, y * scale
        part = obj & (((xx + 0.5 - px) ** 2 + (yy + 0.5 - py) ** 2) <= radius**2)
        group = obj.clone()
        if k > 0:
            x0, y0, x1, y1 = boxes[k]
            for j, (a0, b0, a1, b1) in boxes.items():
                if j != k and a0 <= x1 and x0 <= a1 and b0 <= y1 and y0 <= b1:
                    group |= lowres == j
        obj_t.append(obj)
        part_t.append(part if part.any() else obj)
        group_t.append(group)
    obj_t, part_t, group_t = torch.stack(obj_t), torch.stack(part_t), torch.stack(group_t)
    return [obj_t, part_t, obj_t, group_t]


def _ridge_kron(phi: torch.Tensor, gram: torch.Tensor, rhs: torch.Tensor, lam: float) -> torch.Tensor:
    """Minimise Σ_i Σ_p w_p ((M φ_i)·u_i(p) − y_ip)² + λ|M|² for M ``[c, j]`` in closed form.

    The normal equations have Kronecker structure: A = Σ_i (φ_i φ_iᵀ) ⊗ G_i with
    G_i = Σ_p w_p u_i(p) u_i(p)ᵀ, b = Σ_i φ_i ⊗ s_i with s_i = Σ_p w_p y_ip u_i(p).
    """
    n, j = phi.shape
    c = gram.shape[1]
    a = torch.einsum("nl,nj,ndc->dlcj", phi, phi, gram).reshape(c * j, c * j)
    b = torch.einsum("nl,nd->dl", phi, rhs).reshape(-1)
    a = a + lam * a.diagonal().mean() * torch.eye(c * j, dtype=a.dtype)
    return torch.linalg.solve(a, b).reshape(c, j)


@torch.inference_mode()
def fit_encoder_neck(sam, image: np.ndarray, seed: int = 0) -> float:
    """Make the encoder's output describe the image: colour and position, as a trained encoder's does.

    A random encoder's output is dominated by fixed position patterns of its windows and padding
    and says little about the pixels under it. The neck's 1×1 convolution is refitted (ridge) so
    the embedding approximates random Fourier features of each cell's mean colour and of its
    position; the 3×3 convolution becomes the identity. Returns the fit's R².
    """
    from samkit.sam_transforms import encode_image
    from segment_anything.utils.transforms import ResizeLongestSide

    neck = sam.image_encoder.neck
    captured: dict = {}
    handle = neck.register_forward_pre_hook(lambda m, i: captured.__setitem__("x", i[0]))
    try:
        encode_image(sam, image)
    finally:
        handle.remove()
    trunk = captured["x"][0].double().flatten(1)  # [C_in, P]
    size = sam.image_encoder.img_size
    grid = int(round(trunk.shape[1] ** 0.5))
    resized = torch.as_tensor(ResizeLongestSide(size).apply_image(image)).permute(2, 0, 1).float()[None] / 255
    resized = F.pad(resized, (0, size - resized.shape[-1], 0, size - resized.shape[-2]))
    colour = F.adaptive_avg_pool2d(resized, grid)[0]  # [3, g, g]
    gen = torch.Generator().manual_seed(seed)
    out = neck[0].weight.shape[0]
    n_pos = out // 4
    freq_c = torch.randn(out - n_pos, 3, generator=gen) * 8
    phase_c = torch.rand(out - n_pos, generator=gen) * 2 * np.pi
    freq_p = torch.randn(n_pos, 2, generator=gen) * 2
    phase_p = torch.rand(n_pos, generator=gen) * 2 * np.pi
    yy, xx = torch.meshgrid(torch.linspace(0, 1, grid), torch.linspace(0, 1, grid), indexing="ij")
    target = torch.cat([
        torch.cos(torch.einsum("kc,chw->khw", freq_c, colour) + phase_c[:, None, None]),
        0.5 * torch.cos(torch.einsum("kc,chw->khw", freq_p, torch.stack([xx, yy])) + phase_p[:, None, None]),
    ]).flatten(1).double()
    gram = trunk @ trunk.T
    weight = torch.linalg.solve(gram + 1e-3 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype),
                                trunk @ target.T).T
    residual = ((weight @ trunk - target) ** 2).sum() / ((target - target.mean(1, keepdim=True)) ** 2).sum()
    neck[0].weight.copy_(weight.to(neck[0].weight.dtype)[:, :, None, None])
    identity = torch.zeros_like(neck[2].weight)
    centre = neck[2].weight.shape[-1] // 2
    identity[torch.arange(out), torch.arange(out), centre, centre] = 1
    neck[2].weight.copy_(identity)
    return float(1 - residual)


@torch.inference_mode()
def calibrate_sam_decoder(sam, scene: Scene, n_points: int = 96, seed: int = 0, amplitude: float = 8.0,
                          iou_pass_fraction: float = 0.4, stable_fraction: float = 0.5, log=print) -> dict:
    """Fit the decoder's output layers to ``scene`` (see the module docstring). Edits ``sam`` in place."""
    from samkit.sam_transforms import encode_image
    from segment_anything.utils.transforms import ResizeLongestSide

    dec = sam.mask_decoder
    for m in dec.output_upscaling:
        if isinstance(m, torch.nn.ConvTranspose2d):
            m.weight.copy_(m.weight.mean(dim=(2, 3), keepdim=True).expand_as(m.weight))

    t0 = time.perf_counter()
    embedded = encode_image(sam, scene.image)
    features, input_size = embedded.features, embedded.input_size
    encoder_size = sam.image_encoder.img_size
    pe = sam.prompt_encoder.get_dense_pe()
    transform = ResizeLongestSide(encoder_size)
    h, w = scene.labels.shape

    captured: dict = {}
    handles = [dec.output_upscaling.register_forward_hook(lambda m, i, o: captured.__setitem__("u", o))]
    for k, mlp in enumerate(dec.output_hypernetworks_mlps):
        handles.append(mlp.layers[-1].register_forward_pre_hook(lambda m, i, k=k: captured.__setitem__(f"z{k}", i[0])))
    handles.append(dec.iou_prediction_head.layers[-1].register_forward_pre_hook(
        lambda m, i: captured.__setitem__("q", i[0])))

    rng = np.random.default_rng(seed)
    points = np.stack([rng.uniform(0, w - 1, n_points), rng.uniform(0, h - 1, n_points)], axis=1)
    up_grid = dec.output_upscaling(torch.zeros(1, dec.transformer_dim, 1, 1)).shape[-1]  # 4 (×4 upscaler)
    low = features.shape[-1] * up_grid  # 256: the decoder's low-res mask size
    grid = low // 2  # fit at 128² (the logits are linear in u, so pooling u pools the logits)
    us, zs, qs = [], [], []
    try:
        for start in range(0, n_points, 16):
            pts = points[start : start + 16]
            coords = torch.as_tensor(transform.apply_coords(pts, (h, w)), dtype=torch.float32)[:, None]
            labels = torch.ones((len(pts), 1), dtype=torch.int)
            sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            dec(image_embeddings=features, image_pe=pe, sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense, multimask_output=True)
            us.append(F.avg_pool2d(captured["u"].float(), low // grid))
            zs.append(torch.stack([captured[f"z{k}"].float() for k in range(len(dec.output_hypernetworks_mlps))], 1))
            qs.append(captured["q"].float())
    finally:
        for hd in handles:
            hd.remove()
    u = torch.cat(us).flatten(2)  # [N, 32, P]
    z = torch.cat(zs)  # [N, tokens, 256]
    q = torch.cat(qs)  # [N, 256]

    lowres = _lowres_labels(scene, input_size, encoder_size, grid)
    valid = (lowres >= 0).flatten().float()
    scale = grid * input_size[0] / (encoder_size * h)  # image pixels → grid cells
    targets = _targets(scene, lowres, points, scale, grid)

    achieved_iou, lowres_logits = [], []
    for k, mlp in enumerate(dec.output_hypernetworks_mlps):
        y = targets[k].flatten(1).float()  # [N, P]
        pos = (y * valid).sum(1, keepdim=True).clamp(min=1)
        neg = ((1 - y) * valid).sum(1, keepdim=True).clamp(min=1)
        weight = valid * (y / pos + (1 - y) / neg) / 2  # class-balanced, each point sums to 1
        gram = torch.bmm(u * weight[:, None], u.transpose(1, 2)).double()  # [N, 32, 32]
        rhs = torch.einsum("ncp,np->nc", u, weight * (2 * y - 1) * amplitude).double()
        # z spans at most N directions: solve in that span (exactly the ridge solution there)
        zk = z[:, k].double()
        mean = zk.mean(0)
        _, _, vh = torch.linalg.svd(zk - mean, full_matrices=False)
        basis = vh[: min(len(zk) - 1, vh.shape[0])].T  # [256, r]
        phi = torch.cat([(zk - mean) @ basis, torch.ones(len(zk), 1, dtype=torch.float64)], 1)
        m = _ridge_kron(phi, gram, rhs, lam=1e-4)
        weight_full = m[:, :-1] @ basis.T  # [32, 256]
        bias_full = m[:, -1] - weight_full @ mean
        mlp.layers[-1].weight.copy_(weight_full.to(mlp.layers[-1].weight.dtype))
        mlp.layers[-1].bias.copy_(bias_full.to(mlp.layers[-1].bias.dtype))
        logits = torch.einsum("nj,cj,ncp->np", phi.float(), m.float(), u)
        lowres_logits.append(logits)
        pred = (logits > 0) & (valid > 0)
        truth = (y > 0) & (valid > 0)
        achieved_iou.append(((pred & truth).sum(1) / (pred | truth).sum(1).clamp(min=1)).float())
    achieved = torch.stack(achieved_iou, 1)  # [N, tokens]
    # SAM rates "stuff" (background, huge regions) lower than objects; without this the
    # best-scoring masks would all be the background, which is easy to match
    area = torch.stack([(t.flatten(1).float() * valid).sum(1) / valid.sum() for t in targets], 1)
    quality = achieved - 0.3 * area

    # IoU head: ridge (dual form) from its last hidden layer to the achieved IoU, then a shift so
    # that the chosen share of the multimask outputs passes SAM's default pred_iou_thresh.
    head = dec.iou_prediction_head.layers[-1]
    qd = q.double()
    qmean = qd.mean(0)
    qc = qd - qmean
    kernel = qc @ qc.T
    alpha = torch.linalg.solve(kernel + 0.1 * kernel.diagonal().mean() * torch.eye(len(qc), dtype=kernel.dtype),
                               quality.double() - quality.double().mean(0))
    w_iou = (qc.T @ alpha).T  # [tokens, 256]
    b_iou = quality.double().mean(0) - w_iou @ qmean
    fitted = qd @ w_iou.T + b_iou
    shift = 0.88 - torch.quantile(fitted[:, 1:].flatten(), 1 - iou_pass_fraction).item()
    head.weight.copy_(w_iou.to(head.weight.dtype))
    head.bias.copy_((b_iou + shift).to(head.bias.dtype))

    # Logit scale: the stability score (share of the mask that stays when the cut-off moves by
    # ±1) depends on how steep the logits are at the mask's edge. Scale every mask token's
    # output so that ``stable_fraction`` of the masks passing the IoU filter reach SAM's default
    # 0.95 (measured on the fit points at 128², which the upsampling to full size barely changes).
    # (counted over object masks: large background masks are stable at any gain)
    passing = ((fitted[:, 1:] + shift > 0.88) & (area[:, 1:] < 0.2)).T  # [3, N]
    if not bool(passing.any()):
        passing = (fitted[:, 1:] + shift > 0.88).T
    multimask_logits = torch.stack(lowres_logits[1:])[passing]  # [n, P]
    inside = valid > 0

    def stable_share(gain: float) -> float:
        scaled = multimask_logits[:, inside] * gain
        score = (scaled > 1).sum(1) / (scaled > -1).sum(1).clamp(min=1)
        return float((score >= 0.95).float().mean())

    lo, hi = 0.05, 50.0
    for _ in range(30):  # geometric bisection: the share grows with the gain
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if stable_share(mid) < stable_fraction else (lo, mid)
    gain = (lo * hi) ** 0.5
    for mlp in dec.output_hypernetworks_mlps:
        mlp.layers[-1].weight.mul_(gain)
        mlp.layers[-1].bias.mul_(gain)

    stats = {
        "fit_points": n_points,
        "amplitude": amplitude,
        "iou_pass_fraction": iou_pass_fraction,
        "stable_fraction": stable_fraction,
        "logit_gain": round(gain, 3),
        "mean_fit_iou_per_token": [round(float(v), 3) for v in achieved.mean(0)],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    log(f"calibrated decoder on {n_points} points in {stats['seconds']} s; "
        f"masks vs scene objects, mean IoU per token: {stats['mean_fit_iou_per_token']}; logit gain {gain:.2f}")
    return stats


def _cache_name(prefix: str, spec: dict) -> str:
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return f"{prefix}-{digest}"


def sam_checkpoint(arch: str, scene: Scene, scene_spec: dict, cache_dir: Path, seed: int = 0,
                   fit_points: int = 96, log=print) -> Path:
    """A calibrated SAM checkpoint for ``scene`` (built once, then reused from ``cache_dir``)."""
    spec = {"arch": arch, "seed": seed, "scene": scene_spec, "fit_points": fit_points, "v": CALIBRATION_VERSION}
    name = _cache_name(f"sam_{arch}", spec)
    path = Path(cache_dir) / f"{name}.pth"
    if path.exists():
        return path
    log(f"building a calibrated {arch} checkpoint (once; cached as {path}) ...")
    sam = build_random_sam(arch, seed)
    neck_r2 = fit_encoder_neck(sam, scene.image, seed)
    stats = {"neck_fit_r2": round(neck_r2, 3), **calibrate_sam_decoder(sam, scene, n_points=fit_points, seed=seed, log=log)}
    save_sam_checkpoint(sam, path)  # a plain state dict, as Meta and MobileSAM publish
    path.with_suffix(".json").write_text(json.dumps({**spec, "calibration": stats}, indent=2))
    return path


# ------------------------------------------------------------------ FastSAM


@torch.inference_mode()
def calibrate_fastsam(model, image: np.ndarray, imgsz: int, detections: int, confidence: float) -> dict:
    """Shift the class biases so about ``detections`` anchors score above ``confidence`` on ``image``."""
    from ultralytics.data.augment import LetterBox

    head = model.model[-1]  # Segment (a Detect): cv3[i][-1] is each level's class conv
    convs = [branch[-1] for branch in head.cv3]
    logits: list[torch.Tensor] = []
    handles = [c.register_forward_hook(lambda m, i, o: logits.append(o.flatten())) for c in convs]
    try:
        letterboxed = LetterBox((imgsz, imgsz), auto=False, stride=32)(image=image)
        x = torch.from_numpy(np.ascontiguousarray(letterboxed.transpose(2, 0, 1)))[None].float() / 255
        model(x)
    finally:
        for hd in handles:
            hd.remove()
    values = torch.cat(logits)
    k = min(detections, values.numel())
    cut = torch.topk(values, k).values[-1]
    target = torch.logit(torch.tensor(float(confidence))) + 0.01
    for c in convs:
        c.bias += target - cut
    return {"anchors": int(values.numel()), "passing_target": k}


def fastsam_checkpoint(image: np.ndarray, image_spec: dict, cache_dir: Path, scale: str = "s", imgsz: int = 1024,
                       detections: int = 60, confidence: float = 0.4, seed: int = 0, log=print) -> Path:
    """A FastSAM-format checkpoint (ultralytics trainer dict, fp16 model) calibrated for ``image``."""
    spec = {"scale": scale, "imgsz": imgsz, "detections": detections, "confidence": confidence, "seed": seed,
            "image": image_spec, "v": CALIBRATION_VERSION}
    path = Path(cache_dir) / f"{_cache_name(f'fastsam_{scale}', spec)}.pt"
    if path.exists():
        return path
    log(f"building a calibrated YOLOv8{scale}-seg FastSAM checkpoint (once; cached as {path}) ...")
    model = build_random_fastsam(scale, seed)
    # ultralytics feeds BGR; the benchmark images are RGB arrays, flipped the same way at run time
    stats = calibrate_fastsam(model, np.ascontiguousarray(image[..., ::-1]), imgsz, detections, confidence)
    save_fastsam_model(model, path, imgsz)
    path.with_suffix(".json").write_text(json.dumps({**spec, "calibration": stats}, indent=2))
    return path
