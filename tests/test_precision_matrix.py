"""The precision matrix on the CPU (issue 13): every node × every model family, bf16 against fp32.

Each cell runs the node classes on the same inputs at fp32 and at bf16 and compares the
outputs with the bounds of ``testsupport/precision_matrix.py`` (measured there; see ``BOUNDS``).
Families: the trained SAM fixture (SAM ViT), a small TinyViT checkpoint (MobileSAM's
architecture), the trained FastSAM fixture. fp16 on the CPU is refused by the loader node with a
message that says what to choose. ``bench/gpu_check.py`` runs the same matrix on CUDA in fp16 and bf16.
"""

from __future__ import annotations

import pytest
import torch

from comfyui_sam_kit.nodes.model_loader import SamKitModelLoader
from testsupport import precision_matrix as matrix
from testsupport.trained import heldout_scene


@pytest.fixture(scope="module")
def tinyvit_path(tmp_path_factory):
    return matrix.small_tinyvit_checkpoint(tmp_path_factory.mktemp("tinyvit") / "tinyvit.pth")


@pytest.fixture(scope="module")
def results(tinyvit_path):
    """family -> (bf16 model, [compare() per scene]); each family's nodes run once per precision."""
    out = {}
    for family in matrix.FAMILIES:
        models = {p: matrix.load(family, p, tinyvit_path) for p in matrix.PRECISIONS}
        stats = []
        for spec in matrix.SCENES[family]:
            scene = heldout_scene(*spec)
            ref, got = (matrix.run_nodes(models[p], family, scene) for p in matrix.PRECISIONS)
            stats.append(matrix.compare(ref, got))
        out[family] = (models["bf16"], stats)
    return out


@pytest.mark.parametrize("node", list(matrix.NODE_CHECKS))
@pytest.mark.parametrize("family", ["sam", "tinyvit"])
def test_sam_family_node_in_bf16_on_the_cpu_agrees_with_fp32(results, family, node):
    model, stats = results[family]
    assert model.dtype == torch.bfloat16
    assert all(s["segmap_count"] > 0 and s["everything_count"] > 0 for s in stats), "nothing to compare"
    broken = matrix.violations(family, stats, model, nodes=[node])
    assert not broken, f"{family} bf16 vs fp32: {broken}; {matrix.summary(stats)}"


def test_fastsam_asked_for_bf16_on_the_cpu_runs_fp32_and_gives_the_fp32_outputs(results):
    model, stats = results["fastsam"]
    assert model.is_fastsam and model.dtype == torch.float32  # ultralytics has no bf16 (precision.py)
    assert all(s["identical"] for s in stats)
    assert sum(s["everything_count"] for s in stats) > 0, "nothing to compare"


@pytest.mark.parametrize("family", matrix.FAMILIES)
def test_fp16_on_the_cpu_is_refused_by_the_loader_node_naming_what_to_choose(tinyvit_path, family):
    with matrix.in_model_folder(matrix.family_path(family, tinyvit_path)) as name, \
            pytest.raises(ValueError, match=r"fp16 is not supported on the CPU; choose 'auto', 'fp32' or 'bf16'"):
        SamKitModelLoader().load(name, "cpu", "fp16")
