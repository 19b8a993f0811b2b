"""The GPU check: the pack on one CUDA GPU, every precision, against the references. One command, one table.

    python -m bench.gpu_check              # on CUDA, <= 8 minutes (--budget, default 420 s of checks)
    python -m bench.gpu_check --dry-run    # the same code paths on the CPU, tiny sizes (CI runs it)

Rows, in the order they run (the costliest last; a group that would overrun the budget is
skipped and says so, and a hard stop still prints the table):

1. **matrix**: the precision matrix of ``tests/test_precision_matrix.py`` (every node × the trained SAM
   fixture, a TinyViT checkpoint, the trained FastSAM fixture), fp16 and bf16 each compared with
   fp32 on the same inputs, with the CPU test's bounds (``tests/testsupport/precision_matrix.py``).
2. **seg map 1024² vit_t** (MobileSAM's architecture): ``samkit.segmap.segmentation_map`` at
   fp32 / fp16 / bf16, cold (first run after loading) and warm (median of three); the reference,
   segment-anything's ``SamAutomaticMaskGenerator`` plus largest-first painting, fp32 (it has no
   half-precision path), timed in the same run, same checkpoint and image.
3. **Tiny SAM click** (vit_t): cold (encoder + decoder), warm (a new click on the cached embedding);
   reference ``SamPredictor.set_image`` + ``predict``, then ``predict`` alone.
4. **FastSAM-s** (Tiny SAM with a box): ours vs ``ultralytics.FastSAM`` with the same box, fp32 and fp16.
5. **seg map 1024² vit_h**: as 2.

Checkpoints are ``bench/checkpoints.py``'s: the real full-size architectures with synthetic,
calibrated weights (built on the first run, then cached). ``ours/ref`` is the reference's warm time
over ours (above 1: the pack is faster). ``VRAM`` is the peak allocated during the row, weights
included. In ``--dry-run`` the sizes are tiny (128² image, 4×4 points) and the models are the test
fixtures standing in for the full-size ones (a small TinyViT for vit_t, the trained SAM fixture for
vit_h, the FastSAM fixture for FastSAM-s); fp16 rows show the CPU's refusal.
"""

from __future__ import annotations

import argparse
import gc
import signal
import statistics
import sys
import tempfile
import time
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

from . import common

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = common.REPO_ROOT
#: seconds each group is expected to need on one H200 (checkpoint builds on its CPU included)
ESTIMATE_S = {"matrix": 90, "segmap vit_t": 70, "click vit_t": 20, "fastsam-s": 40, "segmap vit_h": 220}


def _import_pack():
    """The pack as ComfyUI sees it (package ``comfyui_sam_kit``; nodes use relative imports) + test helpers."""
    if "comfyui_sam_kit" not in sys.modules:
        pkg = types.ModuleType("comfyui_sam_kit")
        pkg.__path__ = [str(ROOT)]
        pkg.__file__ = str(ROOT / "__init__.py")
        sys.modules["comfyui_sam_kit"] = pkg
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


_import_pack()

from comfyui_sam_kit.samkit import loader  # noqa: E402
from comfyui_sam_kit.samkit.automask import AutoMaskSettings  # noqa: E402
from comfyui_sam_kit.samkit.embedding_cache import embeddings  # noqa: E402
from comfyui_sam_kit.samkit.precision import fastsam_half_kwargs  # noqa: E402
from comfyui_sam_kit.samkit.segmap import segmentation_map  # noqa: E402
from comfyui_sam_kit.samkit.tiny_sam_job import TinySamRequest, segment_with_prompts  # noqa: E402
from testsupport import precision_matrix as matrix  # noqa: E402
from testsupport.trained import TRAINED_SAM_PATH, heldout_scene  # noqa: E402
from testsupport.trained_fastsam import TRAINED_FASTSAM_PATH  # noqa: E402

DRY_RUN_STAND_INS = {"vit_t": "small TinyViT", "vit_h": "SAM fixture", "FastSAM-s": "FastSAM fixture"}
COLUMNS = ("check", "model", "precision", "cold ms", "warm ms", "reference ms", "ours/ref", "VRAM MiB", "result")


class TimeUp(Exception):
    pass


@dataclass
class Config:
    device: torch.device
    dry_run: bool
    size: int  # image side (px)
    points: int  # seg map points per side
    precisions: tuple
    warm_runs: int  # timed runs after the cold one (their median is "warm")
    budget_s: float
    cache_dir: Path
    started: float = 0.0

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def label(self, arch: str) -> str:
        """The architecture's name, and in a dry run the test model standing in for it."""
        return f"{arch} [dry run: {DRY_RUN_STAND_INS[arch]}]" if self.dry_run else arch


class Table:
    def __init__(self):
        self.rows: list[tuple] = []

    def add(self, check, model, precision, cold=None, warm=None, ref=None, vram=None, result=""):
        ms = lambda s: "-" if s is None else f"{s * 1000:.0f}"  # noqa: E731
        ratio = "-" if ref is None or warm is None or warm <= 0 else f"{ref / warm:.2f}x"
        self.rows.append((check, model, precision, ms(cold), ms(warm), ms(ref), ratio,
                          "-" if vram is None else f"{vram:.0f}", result))

    def print(self, file=sys.stdout):
        print("| " + " | ".join(COLUMNS) + " |", file=file)
        print("|" + "---|" * len(COLUMNS), file=file)
        for row in self.rows:
            print("| " + " | ".join(str(v) for v in row) + " |", file=file)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _reset_vram(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _vram(device):
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _loader_device(device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


def _cold_warm(fn, cfg: Config):
    """(result, cold s, median warm s) of ``fn``: the first call, then ``cfg.warm_runs`` more."""
    out, cold = common.timed(fn, cfg.device)
    warm = [common.timed(fn, cfg.device)[1] for _ in range(cfg.warm_runs)]
    return out, cold, statistics.median(warm)


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def _load(path, precision, cfg):
    """The pack's model at ``precision``, or the loader's refusal (a ValueError's message).

    Loaded models and embeddings from before are dropped first, so a row's VRAM peak holds only its
    own model and its cold run starts from a fresh load.
    """
    loader.clear_cache()
    embeddings.clear()
    gc.collect()
    if cfg.device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        return loader.load_model(str(path), device=_loader_device(cfg.device), precision=precision), None
    except ValueError as exc:
        return None, str(exc)


# ------------------------------------------------------------------ 1. matrix


def check_matrix(cfg: Config, table: Table, tinyvit_path: Path) -> None:
    scenes = {f: specs[:1] for f, specs in matrix.SCENES.items()} if cfg.dry_run else matrix.SCENES
    for family in matrix.FAMILIES:
        path = {"sam": TRAINED_SAM_PATH, "tinyvit": tinyvit_path, "fastsam": TRAINED_FASTSAM_PATH}[family]
        reference, _ = _load(path, "fp32", cfg)
        ref_out = [matrix.run_nodes(reference, family, heldout_scene(*spec)) for spec in scenes[family]]
        reference = None
        for precision in cfg.precisions:
            if precision == "fp32":
                continue
            _reset_vram(cfg.device)
            model, error = _load(path, precision, cfg)
            if model is None:
                table.add("matrix", family, precision, result=f"refused at load: {error}")
                continue
            t0 = time.perf_counter()
            stats = [matrix.compare(ref, matrix.run_nodes(model, family, heldout_scene(*spec)))
                     for ref, spec in zip(ref_out, scenes[family])]
            seconds = time.perf_counter() - t0
            broken = matrix.violations(family, stats, model)
            verdict = "PASS" if not broken else "MISS: " + "; ".join(broken)
            if family == "fastsam" and model.dtype != torch.float32:
                verdict += " (FastSAM fp16: the SAM fixture's bounds, not measured for FastSAM)"
            table.add("matrix", family, f"{precision} (runs {_dtype_name(model.dtype)})", vram=_vram(cfg.device),
                      result=f"{verdict}; {len(stats)} scene(s) in {seconds:.1f} s; {matrix.summary(stats)}")
            log(f"matrix {family} {precision}: {verdict}")


# ------------------------------------------------------------------ 2/5. seg map


def _paint_reference(records, h, w):
    """Largest-first painting of SamAutomaticMaskGenerator records (as bench/compare.py's)."""
    out = np.zeros((h, w, 3), dtype=np.uint8)
    rng = np.random.default_rng(0)
    for rec in sorted(records, key=lambda r: r["area"], reverse=True):
        out[rec["segmentation"]] = rng.integers(0, 256, 3)
    return out


def check_segmap(cfg: Config, table: Table, arch: str, path: Path, image: np.ndarray) -> None:
    from segment_anything import SamAutomaticMaskGenerator

    check = f"seg map {cfg.size}² {cfg.label(arch)}"
    settings = AutoMaskSettings(points_per_side=cfg.points)
    h, w = image.shape[:2]
    reference, _ = _load(path, "fp32", cfg)
    _reset_vram(cfg.device)
    generator = SamAutomaticMaskGenerator(reference.runner, **settings.reference_kwargs())

    def reference_job():
        records = generator.generate(image)
        _paint_reference(records, h, w)
        return records

    records, ref_cold, ref_warm = _cold_warm(reference_job, cfg)
    table.add(check, "segment-anything", "fp32", ref_cold, ref_warm, vram=_vram(cfg.device),
              result=f"{len(records)} segments")
    generator = reference = records = None  # (released before the next model loads)
    tensor = torch.from_numpy(image).float()[None] / 255
    for precision in cfg.precisions:
        model, error = _load(path, precision, cfg)
        if model is None:
            table.add(check, "SAM Kit", precision, result=f"refused at load: {error}")
            continue
        _reset_vram(cfg.device)
        result, cold, warm = _cold_warm(lambda: segmentation_map(model, tensor, settings, 0, sampling="grid"), cfg)
        table.add(check, "SAM Kit", precision, cold, warm, ref_warm, _vram(cfg.device),
                  f"{result.counts[0]} segments")
        model = result = None
        log(f"{check} {precision}: cold {cold:.3f} s, warm {warm:.3f} s, reference {ref_warm:.3f} s")


# ------------------------------------------------------------------ 3. click


def check_click(cfg: Config, table: Table, path: Path, image: np.ndarray) -> None:
    from segment_anything import SamPredictor

    check = f"Tiny SAM click {cfg.label('vit_t')}"
    h, w = image.shape[:2]
    first, second = (w // 3, h // 3), (2 * w // 3, h // 2)
    reference, _ = _load(path, "fp32", cfg)
    predictor = SamPredictor(reference.runner)
    _reset_vram(cfg.device)

    def ref_cold():
        predictor.set_image(image)
        return predictor.predict(point_coords=np.array([first], dtype=np.float32), point_labels=np.array([1]))

    _, cold = common.timed(ref_cold, cfg.device)
    warm = statistics.median(common.timed(lambda: predictor.predict(
        point_coords=np.array([second], dtype=np.float32), point_labels=np.array([1])), cfg.device)[1]
        for _ in range(cfg.warm_runs))
    table.add(check, "segment-anything", "fp32", cold, warm, vram=_vram(cfg.device), result="SamPredictor")
    ref_warm = warm
    predictor = reference = None
    tensor = torch.from_numpy(image).float()[None] / 255
    requests = [TinySamRequest(point_prompt=f"[[{x},{y}]]", point_label="[1]", confidence=0.0) for x, y in (first, second)]
    for precision in cfg.precisions:
        model, error = _load(path, precision, cfg)
        if model is None:
            table.add(check, "SAM Kit", precision, result=f"refused at load: {error}")
            continue
        _reset_vram(cfg.device)
        out, cold = common.timed(lambda: segment_with_prompts(model, tensor, requests[0]), cfg.device)
        warm = statistics.median(common.timed(lambda: segment_with_prompts(model, tensor, requests[1]), cfg.device)[1]
                                 for _ in range(cfg.warm_runs))
        table.add(check, "SAM Kit", precision, cold, warm, ref_warm, _vram(cfg.device), f"{out.counts[0]} object(s)")
        model = None


# ------------------------------------------------------------------ 4. FastSAM


def check_fastsam(cfg: Config, table: Table, path: Path, imgsz: int, image: np.ndarray) -> None:
    from ultralytics import FastSAM

    check = f"{cfg.label('FastSAM-s')} box"
    h, w = image.shape[:2]
    box = [w // 4, h // 4, w // 2, h // 2]
    bgr = np.ascontiguousarray(image[..., ::-1])
    bare = FastSAM(str(path))
    tensor = torch.from_numpy(image).float()[None] / 255
    request = TinySamRequest(size=imgsz, confidence=0.4, box_prompt=f"[{box}]")
    ref_warm = {}
    for half in (False, True):
        label = "fp16" if half else "fp32"
        if half and cfg.device.type == "cpu":
            table.add(check, "ultralytics", label, result="n/a: ultralytics runs fp32 on the CPU")
            continue
        _reset_vram(cfg.device)
        precision_kwargs = fastsam_half_kwargs(torch.float16 if half else torch.float32)
        _, cold, warm = _cold_warm(lambda: bare(bgr, device=str(cfg.device), imgsz=imgsz, conf=0.4, iou=0.9,
                                                retina_masks=True, verbose=False, **precision_kwargs,
                                                bboxes=[[box[0], box[1], box[0] + box[2], box[1] + box[3]]]), cfg)
        ref_warm[label] = warm
        table.add(check, "ultralytics", label, cold, warm, vram=_vram(cfg.device), result="FastSAM(...)(bboxes=)")
    for precision in cfg.precisions:
        model, error = _load(path, precision, cfg)
        if model is None:
            table.add(check, "SAM Kit", precision, result=f"refused at load: {error}")
            continue
        runs = _dtype_name(model.dtype)
        _reset_vram(cfg.device)
        out, cold, warm = _cold_warm(lambda: segment_with_prompts(model, tensor, request), cfg)
        table.add(check, "SAM Kit", f"{precision} (runs {runs})", cold, warm, ref_warm.get(runs), _vram(cfg.device),
                  f"{out.counts[0]} object(s)")
        model = None


# ------------------------------------------------------------------ main


def _models(cfg: Config, tmp: Path, scene) -> dict:
    """Checkpoint paths per check (built lazily: the full-size ones take a while the first time)."""
    from .checkpoints import fastsam_checkpoint, sam_checkpoint

    tinyvit = tmp / "tinyvit.pth"
    if not tinyvit.exists():
        matrix.small_tinyvit_checkpoint(tinyvit)
    if cfg.dry_run:
        return {"tinyvit": lambda: tinyvit, "vit_t": lambda: tinyvit, "vit_h": lambda: TRAINED_SAM_PATH,
                "fastsam-s": lambda: (TRAINED_FASTSAM_PATH, 256)}
    spec = {"h": cfg.size, "w": cfg.size, "seed": 0}
    return {"tinyvit": lambda: tinyvit,
            "vit_t": lambda: sam_checkpoint("vit_t", scene, spec, cfg.cache_dir, log=log),
            "vit_h": lambda: sam_checkpoint("vit_h", scene, spec, cfg.cache_dir, log=log),
            "fastsam-s": lambda: (fastsam_checkpoint(scene.image, spec, cfg.cache_dir, scale="s", imgsz=1024, log=log),
                                  1024)}


def run(cfg: Config, table: Table) -> None:
    from .scenes import make_scene

    scene = make_scene(cfg.size, cfg.size, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _models(cfg, Path(tmp), scene)
        groups = [
            ("matrix", lambda: check_matrix(cfg, table, paths["tinyvit"]())),
            ("segmap vit_t", lambda: check_segmap(cfg, table, "vit_t", paths["vit_t"](), scene.image)),
            ("click vit_t", lambda: check_click(cfg, table, paths["vit_t"](), scene.image)),
            ("fastsam-s", lambda: check_fastsam(cfg, table, *paths["fastsam-s"](), scene.image)),
            ("segmap vit_h", lambda: check_segmap(cfg, table, "vit_h", paths["vit_h"](), scene.image)),
        ]
        for name, group in groups:
            if not cfg.dry_run and cfg.left() < ESTIMATE_S[name]:
                table.add(name, "-", "-", result=f"skipped: {cfg.left():.0f} s of budget left, needs ~{ESTIMATE_S[name]} s")
                continue
            log(f"== {name} ({cfg.left():.0f} s of budget left)")
            try:
                group()
            except TimeUp:
                raise
            except Exception as exc:  # one broken group must not hide the others' rows
                traceback.print_exc()
                table.add(name, "-", "-", result=f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, test fixtures: checks the code paths")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds for the checks (default 420); a hard stop 30 s later still prints the table")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where built checkpoints are kept")
    args = parser.parse_args(argv)
    if args.dry_run:
        cfg = Config(torch.device("cpu"), True, 128, 4, ("fp32", "fp16", "bf16"), 1, args.budget,
                     args.cache_dir or common.default_cache_dir())
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA GPU; run with --dry-run to check the code paths on the CPU", file=sys.stderr)
            return 2
        cfg = Config(torch.device("cuda"), False, 1024, 32, ("fp32", "fp16", "bf16"), 3, args.budget,
                     args.cache_dir or common.default_cache_dir())
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    table = Table()

    def time_up(*_):
        raise TimeUp()

    hard_stop = hasattr(signal, "SIGALRM")
    if hard_stop:  # the table is printed even when a step runs past the budget
        signal.signal(signal.SIGALRM, time_up)
        signal.alarm(int(args.budget) + 30)
    cfg.started = time.perf_counter()
    env = common.environment()
    try:
        run(cfg, table)
    except TimeUp:
        table.add("stopped", "-", "-", result=f"hard stop at {args.budget + 30:.0f} s: later rows not reached")
    finally:
        if hard_stop:
            signal.alarm(0)
    print(f"# SAM Kit GPU check{' (dry run: CPU, tiny sizes, test fixtures)' if cfg.dry_run else ''}: "
          f"{env.get('gpu', 'CPU')}, torch {env['torch']}, {time.perf_counter() - cfg.started:.0f} s")
    table.print()
    failed = [row for row in table.rows if row[-1].startswith(("MISS", "ERROR"))]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
