"""``python -m bench.gpu_check --dry-run``: the GPU check's code paths on the CPU, one table with every row.

The real check runs on a lent GPU in one command; this keeps it from breaking unnoticed in between.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (check, model, precision) of every row the check prints: its specification (bench/gpu_check.py)
SEGMAP_ROWS = [("segment-anything", "fp32"), ("SAM Kit", "fp32"), ("SAM Kit", "fp16"), ("SAM Kit", "bf16")]
EXPECTED = (
    [("matrix", family, precision) for family in ("sam", "tinyvit", "fastsam") for precision in ("fp16", "bf16")]
    + [("seg map 128² vit_t", m, p) for m, p in SEGMAP_ROWS]
    + [("Tiny SAM click vit_t", m, p) for m, p in SEGMAP_ROWS]
    + [("FastSAM-s", m, p) for m, p in [("ultralytics", "fp32"), ("ultralytics", "fp16"), ("SAM Kit", "fp32"),
                                         ("SAM Kit", "fp16"), ("SAM Kit", "bf16")]]
    + [("seg map 128² vit_h", m, p) for m, p in SEGMAP_ROWS]
)


def test_dry_run_prints_one_table_with_every_row_and_no_failure(tmp_path):
    env = {**os.environ, "SAMKIT_MODELS_DIR": str(tmp_path), "SAMKIT_BENCH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert lines[0].startswith("# SAM Kit GPU check (dry run") and lines[1] == table[0]
    header, rows = table[0], [[cell.strip() for cell in line.strip("|").split("|")] for line in table[1:]]
    assert header.split("|")[1].strip() == "check" and all(len(r) == 9 for r in rows)
    for check, model, precision in EXPECTED:
        found = [r for r in rows if r[0].startswith(check) and r[1] == model and r[2].startswith(precision)]
        assert len(found) == 1, (check, model, precision)
        result = found[0][8]
        if precision == "fp16":  # the CPU has no fp16 path: the loader's refusal, or ultralytics' fp32
            assert result.startswith(("refused at load: precision fp16 is not supported on the CPU", "n/a")), result
        else:
            assert result and not result.startswith(("MISS", "ERROR", "skipped")), result
    assert len(rows) == len(EXPECTED)
    # the matrix rows passed their bounds; the timed rows carry times and ratios
    assert all(r[8].startswith("PASS") for r in rows if r[0] == "matrix" and r[2].startswith("bf16"))
    timed = [r for r in rows if r[1] == "SAM Kit" and r[2].startswith(("fp32", "bf16"))]
    assert timed and all(r[3] != "-" and r[4] != "-" and r[6].endswith("x") for r in timed)
