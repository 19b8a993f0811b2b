"""Image embeddings kept between runs, so editing prompts on the same image re-runs only SAM's decoder.

An entry is keyed by

* the image's content: a BLAKE2 digest of the exact RGB uint8 pixels the encoder sees, plus
  their shape (two images that differ in one pixel are different entries);
* the model: its loader key (file, size, mtime, device, dtype), or, for a model built in
  memory, a token tied to that module object's lifetime;
* the encoder settings that change the result: input size, dtype, device type.

Memory is bounded twice: at most ``max_entries`` entries and at most ``max_bytes`` of tensors;
the least recently used entries go first. Entries live in CPU memory (a SAM ViT embedding is
4 MiB in fp32), so the cache never holds GPU memory that ComfyUI's model management cannot see.
Entries outlive no model: when a model that :func:`model_token` named is garbage-collected (the
loader's LRU dropped it, or ComfyUI freed it), every cache drops the entries of its token.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import weakref
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np
import torch

DEFAULT_MAX_ENTRIES = 16
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ImageEmbedding:
    """What SAM's decoder needs from the encoder for one image.

    ``features``: ``[1, C, h, w]`` encoder output; ``input_size``: (h, w) of the image after
    resizing its longest side to the encoder's size (before padding); ``original_size``: (h, w)
    of the image itself.
    """

    features: torch.Tensor
    input_size: tuple
    original_size: tuple

    @property
    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size()

    def to(self, device: torch.device) -> "ImageEmbedding":
        if self.features.device == device:
            return self
        return ImageEmbedding(self.features.to(device, non_blocking=False), self.input_size, self.original_size)


def image_digest(image: np.ndarray) -> str:
    """Content hash of an array (dtype, shape and bytes)."""
    array = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(memoryview(array).cast("B"))
    return h.hexdigest()


_module_tokens: "weakref.WeakKeyDictionary[torch.nn.Module, int]" = weakref.WeakKeyDictionary()
_token_counter = itertools.count(1)
_token_lock = threading.Lock()
#: what a token names (a loaded model, or a module built in memory): its death purges the token
_watched: "weakref.WeakSet[object]" = weakref.WeakSet()
#: every cache, so a dead model's entries leave all of them
_caches: "weakref.WeakSet[EmbeddingCache]" = weakref.WeakSet()


def model_token(model) -> Hashable:
    """A cache identity for a :class:`~samkit.loaded_model.LoadedModel`.

    The loader's key names the file and its state; a model without one (built in memory) gets a
    token that is never reused, unlike ``id()``, which a new object may inherit. When what the
    token names is garbage-collected (the LoadedModel for a file, the module for a model built in
    memory), its entries leave every cache; a model loaded again from the same file encodes again.
    """
    if getattr(model, "key", None):
        token, owner = ("file",) + tuple(model.key), model
    else:
        owner = model.module
        with _token_lock:
            number = _module_tokens.get(owner)
            if number is None:
                number = next(_token_counter)
                _module_tokens[owner] = number
        token = ("memory", number)
    if owner not in _watched:
        with _token_lock:
            if owner not in _watched:
                _watched.add(owner)
                weakref.finalize(owner, _owner_died, token).atexit = False
    return token


def _owner_died(token: Hashable) -> None:
    # A finalizer may run inside any allocation (a garbage collection), even while this thread
    # holds a cache's lock: it only queues the token and never waits for a lock.
    for cache in list(_caches):
        cache._forget_later(token)


class EmbeddingCache:
    """A bounded LRU of :class:`ImageEmbedding` values.

    Keys are tuples whose first item is the model's :func:`model_token` (what the purge of a
    garbage-collected model matches on).
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._entries: "OrderedDict[Hashable, ImageEmbedding]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._dead_tokens: "deque[Hashable]" = deque()  # queued by finalizers, purged under the lock
        #: how many times the image encoder ran through this cache (tests and benchmarks read it)
        self.encoder_calls = 0
        self.hits = 0
        _caches.add(self)

    @contextmanager
    def _locked(self):
        with self._lock:
            yield
            self._purge_dead()
        # a finalizer that found the lock taken queued its token: purge it now if nobody else will
        while self._dead_tokens and self._lock.acquire(blocking=False):
            try:
                self._purge_dead()
            finally:
                self._lock.release()

    def _purge_dead(self) -> None:
        while self._dead_tokens:
            self._drop_token(self._dead_tokens.popleft())

    def _drop_token(self, token: Hashable) -> None:
        doomed = [k for k in self._entries if isinstance(k, tuple) and k and k[0] == token]
        for k in doomed:
            self._bytes -= self._entries.pop(k).nbytes

    def _forget_later(self, token: Hashable) -> None:
        self._dead_tokens.append(token)
        if self._lock.acquire(blocking=False):
            try:
                self._purge_dead()
            finally:
                self._lock.release()

    def get_or_compute(self, key: Hashable, compute: Callable[[], ImageEmbedding], device: torch.device) -> ImageEmbedding:
        """The entry for ``key`` on ``device``, running ``compute`` (the encoder) only on a miss."""
        with self._locked():
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self.hits += 1
        if hit is not None:
            return hit.to(device)
        value = compute()
        with self._locked():
            self.encoder_calls += 1
        self._store(key, value.to(torch.device("cpu")))
        return value

    def _store(self, key: Hashable, value: ImageEmbedding) -> None:
        if self.max_entries <= 0 or value.nbytes > self.max_bytes:
            return  # too big to keep at all: the next run encodes again
        with self._locked():
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = value
            self._bytes += value.nbytes
            while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes

    def __contains__(self, key: Hashable) -> bool:
        with self._locked():
            return key in self._entries

    def __len__(self) -> int:
        with self._locked():
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._locked():
            return self._bytes

    def clear(self) -> None:
        with self._locked():
            self._entries.clear()
            self._bytes = 0


#: the cache the Tiny SAM job uses
embeddings = EmbeddingCache()
