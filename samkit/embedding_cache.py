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
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import weakref
from collections import OrderedDict
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


def model_token(model) -> Hashable:
    """A cache identity for a :class:`~samkit.models.LoadedModel`.

    The loader's key names the file and its state; a model without one (built in memory) gets a
    token that is never reused, unlike ``id()``, which a new object may inherit.
    """
    if getattr(model, "key", None):
        return ("file",) + tuple(model.key)
    with _token_lock:
        token = _module_tokens.get(model.module)
        if token is None:
            token = next(_token_counter)
            _module_tokens[model.module] = token
    return ("memory", token)


class EmbeddingCache:
    """A bounded LRU of :class:`ImageEmbedding` values."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._entries: "OrderedDict[Hashable, ImageEmbedding]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        #: how many times the image encoder ran through this cache (tests and benchmarks read it)
        self.encoder_calls = 0
        self.hits = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], ImageEmbedding], device: torch.device) -> ImageEmbedding:
        """The entry for ``key`` on ``device``, running ``compute`` (the encoder) only on a miss."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self.hits += 1
        if hit is not None:
            return hit.to(device)
        value = compute()
        with self._lock:
            self.encoder_calls += 1
        self._store(key, value.to(torch.device("cpu")))
        return value

    def _store(self, key: Hashable, value: ImageEmbedding) -> None:
        if self.max_entries <= 0 or value.nbytes > self.max_bytes:
            return  # too big to keep at all: the next run encodes again
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = value
            self._bytes += value.nbytes
            while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


#: the cache the Tiny SAM job uses
embeddings = EmbeddingCache()
