"""Train the SAM test fixture: a tiny segment-anything model that really segments shapes scenes.

No real SAM weights exist where the tests run, and random weights cannot tell a correct
pipeline from a broken one. This script trains a model of SAM's exact architecture
(``ImageEncoderViT`` + ``PromptEncoder`` + ``MaskDecoder(TwoWayTransformer)``, small sizes) on
``shapes.make_scene`` scenes, the way SAM is trained: point and box prompts, three ambiguity
outputs with the loss on the best one, the single-mask output trained for every prompt, and the
IoU head regressed on each output's real IoU (so ``pred_iou`` means something and "everything"
mode can filter on it). One training-only aid makes it learn in minutes: a dense instance-embedding
loss on the decoder's upscaled image features (every pixel gets a signal, not only the prompted
shape's); it adds no weights. It saves ``torch.save(sam.state_dict(), path)``, the format Meta
publishes, so loaders treat it like any SAM checkpoint.

    python tests/testmodels/train_sam.py                      # writes tests/testmodels/sam_shapes.pth
    python tests/testmodels/train_sam.py --out /tmp/x.pth --steps 50

CPU only, two threads, deterministic for a given seed and step count.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):
    sys.path.insert(0, str(HERE.parent))  # run as a script: make `testmodels` importable
from testmodels.shapes import TRAIN_SEEDS, make_scene  # noqa: E402

DEFAULT_OUT = HERE / "sam_shapes.pth"
DEFAULT_SEED = 0
DEFAULT_STEPS = 1800

# The architecture. The loader derives all of it from tensor shapes; nothing reads this dict
# except build_sam below and the tests' direct construction.
SAM_CONFIG = dict(
    img_size=256,
    patch_size=16,
    embed_dim=64,
    depth=3,
    num_heads=2,
    window_size=4,
    global_attn_indexes=(2,),
    prompt_embed_dim=128,  # = encoder neck out_chans = decoder transformer width
    decoder_depth=2,
    decoder_mlp_dim=512,
    iou_head_depth=3,
    iou_head_hidden_dim=64,
    mask_in_chans=16,
)

PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]


def build_sam(config: dict = SAM_CONFIG):
    """A segment-anything ``Sam`` with ``config``'s sizes (SAM's own classes, nothing custom)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    c = config
    grid = c["img_size"] // c["patch_size"]
    dim = c["prompt_embed_dim"]
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=c["img_size"], patch_size=c["patch_size"], embed_dim=c["embed_dim"], depth=c["depth"],
            num_heads=c["num_heads"], mlp_ratio=4.0, out_chans=dim, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            global_attn_indexes=tuple(c["global_attn_indexes"]), window_size=c["window_size"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(c["img_size"], c["img_size"]),
            mask_in_chans=c["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=c["decoder_depth"], embedding_dim=dim, mlp_dim=c["decoder_mlp_dim"], num_heads=8),
            transformer_dim=dim, iou_head_depth=c["iou_head_depth"], iou_head_hidden_dim=c["iou_head_hidden_dim"],
        ),
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
    )


# ---------------------------------------------------------------- data


def render_training_scenes(n_scenes: int, seed: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, masks) pairs already at the model's input scale (longest side = ``size``).

    Most scenes are rendered at that scale; some are rendered larger or non-square and
    resized the way ``SamPredictor`` resizes (PIL via ``ResizeLongestSide``), so padding and
    resampling blur are in the training distribution.
    """
    from segment_anything.utils.transforms import ResizeLongestSide

    resize = ResizeLongestSide(size)
    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(n_scenes):
        scene_seed = TRAIN_SEEDS[(seed * 100_003 + i) % len(TRAIN_SEEDS)]
        style = rng.uniform()
        if style < 0.6:
            h = w = size
        else:
            long = int(rng.integers(size, int(size * 1.5) + 1)) if style < 0.8 else size
            short = int(rng.integers(int(long * 0.55), long + 1))
            h, w = (long, short) if rng.uniform() < 0.5 else (short, long)
        scene = make_scene(scene_seed, h, w)
        image, masks = scene.image, scene.masks
        if max(h, w) != size:
            image = resize.apply_image(image)
            nh, nw = image.shape[:2]
            # nearest-neighbour mask resize at pixel centres
            ys = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(int), h - 1)
            xs = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(int), w - 1)
            masks = masks[:, ys][:, :, xs]
            keep = masks.reshape(len(masks), -1).any(1)
            masks = masks[keep]
        scenes.append((image, masks))
    return scenes


def augment(rng: np.random.Generator, image: np.ndarray, masks: np.ndarray):
    """A random element of the dihedral group (flips and transpose): exact for masks."""
    if rng.uniform() < 0.5:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    if rng.uniform() < 0.5:
        image, masks = image[::-1], masks[:, ::-1]
    if rng.uniform() < 0.5:
        image, masks = image.transpose(1, 0, 2), masks.transpose(0, 2, 1)
    return np.ascontiguousarray(image), np.ascontiguousarray(masks)


def _random_pixel(rng: np.random.Generator, mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    i = int(rng.integers(len(ys)))
    return float(xs[i]), float(ys[i])


def _noisy_box(rng: np.random.Generator, mask: np.ndarray, h: int, w: int) -> list[float]:
    """The mask's box with SAM-style corner noise (10% of the side, at most a few pixels)."""
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
    side = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    noise = np.clip(rng.normal(0, 0.1, size=4) * side, -6, 6)
    box = box + noise
    return [float(np.clip(box[0], 0, w - 1)), float(np.clip(box[1], 0, h - 1)),
            float(np.clip(box[2], 0, w - 1)), float(np.clip(box[3], 0, h - 1))]


# Prompt kinds, each decoded in its own group because SAM's prompt encoder pads a points-only
# prompt with one "not a point" token and a box-only prompt with none, exactly as at inference.
POINT1, POINT2, POS_NEG, BOX, BACKGROUND = "point1", "point2", "pos_neg", "box", "background"


def sample_prompts(rng: np.random.Generator, masks: np.ndarray, per_image: int):
    """Prompts for one image: list of (kind, coords [n,2] or box [4], labels [n], target mask)."""
    n, h, w = masks.shape
    background = ~masks.any(0)
    prompts = []
    for _ in range(per_image):
        u = rng.uniform()
        if u < 0.08 and background.sum() > 0.05 * h * w:
            prompts.append((BACKGROUND, [_random_pixel(rng, background)], [1], background))
            continue
        k = int(rng.integers(n))
        target = masks[k]
        if u < 0.42:
            prompts.append((POINT1, [_random_pixel(rng, target)], [1], target))
        elif u < 0.72:
            prompts.append((BOX, _noisy_box(rng, target, h, w), None, target))
        elif u < 0.86 and n > 1:
            # a negative click on another shape, preferring one that touches k (the hard case)
            others = [j for j in range(n) if j != k]
            grown = _dilate(target, 3)
            touching = [j for j in others if (masks[j] & grown).any()]
            j = int(rng.choice(touching if touching and rng.uniform() < 0.7 else others))
            prompts.append((POS_NEG, [_random_pixel(rng, target), _random_pixel(rng, masks[j])], [1, 0], target))
        else:
            prompts.append((POINT2, [_random_pixel(rng, target), _random_pixel(rng, target)], [1, 1], target))
    return prompts


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(r):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


# ---------------------------------------------------------------- model pieces


def decode(sam, image_embeddings: torch.Tensor, image_index: torch.Tensor, sparse: torch.Tensor):
    """``MaskDecoder.predict_masks`` for prompts of several images at once.

    The library version repeats one image's embedding for every prompt; training batches
    prompts from many images, so each prompt takes its own image's embedding. Same math,
    checked against the library in ``check_decode_matches_library``.
    """
    md = sam.mask_decoder
    output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)
    src = image_embeddings[image_index] + sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    pos_src = sam.prompt_encoder.get_dense_pe().expand(src.shape[0], -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = md.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1: 1 + md.num_mask_tokens, :]
    upscaled = md.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=1)
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    return masks, md.iou_prediction_head(iou_token_out)


@torch.no_grad()
def check_decode_matches_library(sam) -> None:
    size = sam.image_encoder.img_size
    grid = sam.prompt_encoder.image_embedding_size
    emb = torch.randn(2, sam.prompt_encoder.embed_dim, *grid)
    pts = torch.rand(3, 1, 2) * size
    sparse, dense = sam.prompt_encoder(points=(pts, torch.ones(3, 1)), boxes=None, masks=None)
    ours, our_iou = decode(sam, emb, torch.tensor([1, 1, 1]), sparse)
    theirs, their_iou = sam.mask_decoder.predict_masks(emb[1:2], sam.prompt_encoder.get_dense_pe(), sparse, dense)
    if not (torch.allclose(ours, theirs, atol=1e-4) and torch.allclose(our_iou, their_iou, atol=1e-5)):
        raise AssertionError("batched decode drifted from segment_anything's MaskDecoder.predict_masks")


def encode_prompts(sam, kind: str, items: list, device="cpu") -> torch.Tensor:
    if kind == BOX:
        boxes = torch.tensor([it[0] for it in items], dtype=torch.float32, device=device)
        sparse, _ = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    else:
        coords = torch.tensor([it[0] for it in items], dtype=torch.float32, device=device)
        labels = torch.tensor([it[1] for it in items], dtype=torch.float32, device=device)
        sparse, _ = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    return sparse


def mask_losses(logits: torch.Tensor, target: torch.Tensor):
    """Per-(prompt, output) BCE + dice, and each output's real IoU at logit 0.

    logits [P, M, H, W], target [P, H, W] float.
    """
    t = target[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").mean((2, 3))
    p = logits.sigmoid()
    inter = (p * t).sum((2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((2, 3)) + t.sum((2, 3)) + 1)
    with torch.no_grad():
        hard = logits > 0
        tb = t > 0.5
        iou = (hard & tb).sum((2, 3)).float() / ((hard | tb).sum((2, 3)).float().clamp(min=1))
    return bce * 5 + dice, iou


def instance_embedding_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pixels of one instance share a direction, different instances point apart (cosine).

    ``features`` [B,C,h,w]: the mask decoder's upscaled image features, the very features SAM's
    masks are dot products with; ``labels`` [B,h,w]: 0 background, k shape k, -1 padding (ignored).
    """
    f = F.normalize(features, dim=1)
    losses = []
    for b in range(f.shape[0]):
        lab = labels[b].flatten()
        e = f[b].flatten(1).T
        valid = lab >= 0
        lab, e = lab[valid], e[valid]
        ids = torch.unique(lab)
        centers = F.normalize(torch.stack([e[lab == i].mean(0) for i in ids]), dim=1)
        pull = (1 - (e * centers[torch.searchsorted(ids, lab)]).sum(1)).mean()
        sim = centers @ centers.T
        off = sim[~torch.eye(len(ids), dtype=torch.bool)]
        push = F.relu(off).pow(2).mean() if off.numel() else sim.new_zeros(())
        losses.append(pull + push)
    return torch.stack(losses).mean()


def label_map(masks: np.ndarray, h: int, w: int, stride: int) -> np.ndarray:
    """Instance ids (0 = background) sampled at the centres of ``stride``-pixel cells."""
    lab = np.zeros((h, w), dtype=np.int64)
    for k in range(len(masks)):
        lab[masks[k]] = k + 1
    return np.ascontiguousarray(lab[stride // 2::stride, stride // 2::stride])


# ---------------------------------------------------------------- training


def _validation_batch(sam, seed: int, size: int, mean, std):
    """Fixed scenes for progress logs: training-range seeds the run never renders (the held-out
    range stays untouched for the tests)."""
    rng = np.random.default_rng(seed + 1)
    images, coords, index, targets = [], [], [], []
    for i in range(12):
        scene = make_scene(TRAIN_SEEDS[-1 - i], size, size)
        images.append((torch.from_numpy(scene.image).permute(2, 0, 1).float() - mean) / std)
        for m in scene.masks:
            coords.append([_random_pixel(rng, m)])
            index.append(i)
            targets.append(m)
    return (torch.stack(images), torch.tensor(coords, dtype=torch.float32), torch.tensor(index),
            torch.from_numpy(np.stack(targets)))


@torch.no_grad()
def _validate(sam, val) -> float:
    """Mean IoU of the output the model itself rates best, one positive click per shape."""
    images, coords, index, targets = val
    was_training = sam.training
    sam.eval()
    sparse, _ = sam.prompt_encoder(points=(coords, torch.ones(len(coords), 1)), boxes=None, masks=None)
    low, iou_pred = decode(sam, sam.image_encoder(images), index, sparse)
    logits = F.interpolate(low, targets.shape[-2:], mode="bilinear", align_corners=False)
    best = logits[torch.arange(len(logits)), 1 + iou_pred[:, 1:].argmax(1)] > 0
    iou = (best & targets).sum((1, 2)).float() / (best | targets).sum((1, 2)).float().clamp(min=1)
    sam.train(was_training)
    return float(iou.mean())


def train(out: Path, seed: int = DEFAULT_SEED, steps: int = DEFAULT_STEPS, minutes: float | None = None,
          n_scenes: int = 400, images_per_step: int = 8, prompts_per_image: int = 4, lr: float = 1.5e-3,
          log=print, log_every: int = 100, pe_scale: float = 1.0, aux_weight: float = 2.0,
          threads: int = 2) -> dict:
    started = time.monotonic()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(seed)

    sam = build_sam()
    if pe_scale != 1.0:
        # The prompt encoder's random Fourier matrix is a saved buffer, so a sharper one is part
        # of the checkpoint, not of the architecture. Higher frequencies let a click pick out
        # its own token instead of a blur over half the image.
        with torch.no_grad():
            sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(pe_scale)
    check_decode_matches_library(sam)
    size = SAM_CONFIG["img_size"]
    # Loss on the decoder's own low-res grid (size/4), against area-averaged soft targets: the
    # cheapest place to compare, and soft targets still carry sub-cell edge positions.
    loss_size = size // 4
    stride = size // loss_size
    scenes = render_training_scenes(n_scenes, seed, size)
    log(f"rendered {len(scenes)} training scenes in {time.monotonic() - started:.1f}s")

    sam.train()
    params = [p for p in sam.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)

    val = _validation_batch(sam, seed, size, mean, std)
    history = []
    step = 0
    for step in range(steps):
        if minutes is not None and time.monotonic() - started > minutes * 60:
            log(f"time budget reached after {step} steps")
            break
        batch = torch.zeros(images_per_step, 3, size, size)
        groups: dict[str, list] = {}
        instance_cells = torch.full((images_per_step, loss_size, loss_size), -1, dtype=torch.long)
        for b in range(images_per_step):
            image, masks = scenes[int(rng.integers(len(scenes)))]
            image, masks = augment(rng, image, masks)
            h, w = image.shape[:2]
            # sam.preprocess: normalise, then pad bottom/right with zeros
            batch[b, :, :h, :w] = (torch.from_numpy(image).permute(2, 0, 1).float() - mean) / std
            cells = label_map(masks, h, w, stride)
            instance_cells[b, :cells.shape[0], :cells.shape[1]] = torch.from_numpy(cells)
            for kind, coords, labels, target in sample_prompts(rng, masks, prompts_per_image):
                full = np.zeros((size, size), dtype=bool)
                full[:h, :w] = target
                # prompts with the same token layout are decoded together
                key = BOX if kind == BOX else f"points{len(coords)}"
                groups.setdefault(key, []).append((coords, labels, full, b))

        emb = sam.image_encoder(batch)
        losses, ious, preds = [], [], []
        for kind in sorted(groups):
            items = groups[kind]
            sparse = encode_prompts(sam, kind, items)
            index = torch.tensor([it[3] for it in items])
            low, iou_pred = decode(sam, emb, index, sparse)
            logits = low
            target = torch.from_numpy(np.stack([it[2] for it in items])).float()
            target = F.adaptive_avg_pool2d(target[:, None], loss_size)[:, 0]
            per_output, real_iou = mask_losses(logits, target)
            # SAM: single-mask output always, plus the best of the three ambiguity outputs
            losses.append(per_output[:, 0] + per_output[:, 1:].min(1).values)
            ious.append(real_iou)
            preds.append(iou_pred)
        mask_loss = torch.cat(losses).mean()
        iou_loss = F.mse_loss(torch.cat(preds), torch.cat(ious))
        aux = instance_embedding_loss(sam.mask_decoder.output_upscaling(emb), instance_cells)
        loss = mask_loss + iou_loss + aux_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        best_iou = torch.cat(ious)[:, 1:].max(1).values.mean().item()
        history.append(best_iou)
        if step % log_every == 0 or step == steps - 1:
            log(f"step {step:4d}  loss {loss.item():.3f}  iou-loss {iou_loss.item():.4f}  "
                f"embedding {aux.item():.3f}  train best-IoU {best_iou:.3f}  val point-IoU {_validate(sam, val):.3f}  "
                f"{time.monotonic() - started:.0f}s")

    sam.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(sam.state_dict(), tmp)
    tmp.replace(out)
    seconds = time.monotonic() - started
    log(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB) after {step + 1} steps in {seconds:.0f}s")
    return {"steps": step + 1, "seconds": seconds, "final_train_iou": float(np.mean(history[-20:]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the state dict (.pth)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps (sets the LR schedule too)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="stop early after this many minutes (safety cap; the result then depends on speed)")
    ap.add_argument("--scenes", type=int, default=400, help="training scenes rendered up front")
    ap.add_argument("--images", type=int, default=8, help="images per step")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per image per step")
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--pe-scale", type=float, default=1.0)
    ap.add_argument("--embedding-loss", type=float, default=2.0, help="weight of the dense instance-embedding loss")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    train(args.out, seed=args.seed, steps=args.steps, minutes=args.minutes, n_scenes=args.scenes,
          images_per_step=args.images, prompts_per_image=args.prompts, lr=args.lr,
          pe_scale=args.pe_scale, aux_weight=args.embedding_loss, threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
