"""Models the pack lets go of are freed, with their image embeddings (no ComfyUI here).

Inside ComfyUI the bridge keeps one ModelPatcher per LoadedModel in a weak map, so a LoadedModel
that dies takes its patcher along; tests/integration/test_memory.py checks that part in a real
ComfyUI. Here: the loader's LRU, ``loader.release`` (what the bridge calls when ComfyUI unloads
a model), the embedding purge when a model dies, and FastSAM keeping one copy of its weights.
Deaths are checked by weak reference without ``gc.collect()``: the pack's objects form no
reference cycles, so they go the moment the last holder lets go (a cycle would keep the
weights until the next garbage collection).
"""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest

from comfyui_sam_kit.samkit import loader
from comfyui_sam_kit.samkit.embedding_cache import EmbeddingCache, model_token
from comfyui_sam_kit.samkit.sam_prompted import embed_image
from testsupport.checkpoints import build_small_sam, save_fastsam_checkpoint, save_sam_checkpoint

IMAGE = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def _fresh_cache():
    loader.clear_cache()
    yield
    loader.clear_cache()


@pytest.fixture
def model_files(_isolated_model_dir):
    """CACHE_SIZE + 1 distinct small SAM checkpoints (one more than the loader keeps)."""
    return [save_sam_checkpoint(build_small_sam(seed=i), _isolated_model_dir / f"sam_{i}.pth")
            for i in range(loader.CACHE_SIZE + 1)]


def _token_entries(cache: EmbeddingCache, token) -> int:
    return sum(1 for key in list(cache._entries) if key[0] == token)


def _load_and_embed(path, cache: EmbeddingCache):
    """Load (cache: the loader's), embed IMAGE once; returns weak references and the token only."""
    model = loader.load_model(path, device="cpu", precision="fp32")
    embed_image(model, IMAGE, cache)
    return weakref.ref(model), weakref.ref(model.module), model_token(model)


def test_lru_eviction_frees_the_model_and_its_embeddings(model_files):
    cache = EmbeddingCache()
    first_model, first_module, first_token = _load_and_embed(model_files[0], cache)
    assert first_model() is not None and _token_entries(cache, first_token) == 1
    later = [_load_and_embed(path, cache) for path in model_files[1:loader.CACHE_SIZE]]
    assert first_model() is not None, "a model within the cache size was dropped"

    _last_model, _last_module, last_token = _load_and_embed(model_files[-1], cache)  # one more: evicts the oldest
    assert first_model() is None and first_module() is None, "the evicted model is still alive"
    assert _token_entries(cache, first_token) == 0, "the evicted model's embeddings stayed"
    assert all(ref() is not None for ref, _m, _t in later)
    assert _token_entries(cache, last_token) == 1 and len(cache) == loader.CACHE_SIZE


def test_an_evicted_model_still_held_elsewhere_lives_and_keeps_its_embeddings(model_files):
    # ComfyUI's execution cache holds the loader node's output like this
    cache = EmbeddingCache()
    held = loader.load_model(model_files[0], device="cpu", precision="fp32")
    embed_image(held, IMAGE, cache)
    token, module = model_token(held), weakref.ref(held.module)
    for path in model_files[1:]:
        _load_and_embed(path, cache)
    assert held not in loader.cached_models()
    assert _token_entries(cache, token) == 1
    before = cache.encoder_calls
    embed_image(held, IMAGE, cache)
    assert cache.encoder_calls == before, "a model that is alive lost its embedding"
    del held
    assert module() is None and _token_entries(cache, token) == 0


def test_release_lets_go_and_the_next_load_reads_the_file_again(model_files):
    model = loader.load_model(model_files[0], device="cpu", precision="fp32")
    loads = loader.load_count
    assert loader.release(model) is True
    assert model not in loader.cached_models()
    assert loader.release(model) is False, "releasing twice must say the cache no longer held it"
    # the holder can still run it (ComfyUI's execution cache, after "unload models")
    assert embed_image(model, IMAGE, EmbeddingCache()).features.shape[0] == 1
    again = loader.load_model(model_files[0], device="cpu", precision="fp32")
    assert again is not model and loader.load_count == loads + 1
    assert loader.load_model(model_files[0], device="cpu", precision="fp32") is again  # cached once more

    module = weakref.ref(model.module)
    del model
    assert module() is None, "a released model nobody holds stayed alive"


def test_clear_cache_frees_every_model(model_files):
    refs = [_load_and_embed(path, EmbeddingCache())[1] for path in model_files[:2]]
    assert all(ref() is not None for ref in refs)
    loader.clear_cache()
    assert all(ref() is None for ref in refs)


def test_every_cache_drops_the_entries_of_a_model_built_in_memory_when_its_module_dies():
    from comfyui_sam_kit.samkit.loaded_model import SAM_FAMILY, LoadedModel

    import torch

    sam = build_small_sam(seed=7)
    model = LoadedModel("in-memory", "", SAM_FAMILY, "vit_custom", sam, sam, torch.device("cpu"), torch.float32)
    caches = [EmbeddingCache(), EmbeddingCache()]
    for cache in caches:
        embed_image(model, IMAGE, cache)
    token = model_token(model)
    # another wrapper of the same module shares the token: the entries live while the module does
    twin = LoadedModel("twin", "", SAM_FAMILY, "vit_custom", sam, sam, torch.device("cpu"), torch.float32)
    assert model_token(twin) == token
    del model
    assert all(_token_entries(cache, token) == 1 for cache in caches)
    del twin, sam
    assert all(len(cache) == 0 for cache in caches)
    assert all(cache.nbytes == 0 for cache in caches)


def test_a_model_dying_while_its_cache_is_locked_by_the_same_thread_neither_deadlocks_nor_lingers(model_files):
    # A garbage collection can run a finalizer anywhere, also inside a cache's own locked section.
    cache = EmbeddingCache()
    _ref, module, token = _load_and_embed(model_files[0], cache)
    done = threading.Event()

    def die_inside_the_lock():
        with cache._locked():
            loader.clear_cache()  # the model dies here, its finalizer runs in this thread
            assert module() is None
            assert _token_entries(cache, token) == 1  # queued, not purged under the caller's feet
        done.set()

    worker = threading.Thread(target=die_inside_the_lock, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert done.is_set(), "the finalizer deadlocked on the cache's lock"
    assert _token_entries(cache, token) == 0 and cache.nbytes == 0, "the queued purge never ran"


def test_fastsam_keeps_one_copy_the_one_that_runs(_isolated_model_dir):
    from ultralytics.nn.tasks import SegmentationModel

    from comfyui_sam_kit.samkit.fastsam import predict_everything

    def live_segmentation_models() -> int:
        gc.collect()  # count only what is really reachable
        return sum(type(o) is SegmentationModel for o in gc.get_objects())

    path = save_fastsam_checkpoint(_isolated_model_dir / "fastsam.pt", seed=1)
    before = live_segmentation_models()
    model = loader.load_model(path, device="cpu")
    # ultralytics' predictor runs a fused deep copy; the checkpoint dict kept the original:
    # without the loader's care there would be two (three with an EMA in the file)
    assert live_segmentation_models() - before == 1
    assert model.runner.predictor.model.model is model.module is model.runner.model
    assert model.runner.ckpt == {}
    # predictions go on through the same predictor (it is not rebuilt, which would copy again)
    predictor = model.runner.predictor
    predict_everything(model, IMAGE, size=64)
    assert model.runner.predictor is predictor and live_segmentation_models() - before == 1
