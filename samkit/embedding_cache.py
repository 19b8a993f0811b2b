"""Image embeddings kept between runs: editing prompts on the same image re-runs only the decoder.

Keyed by the image's content (a hash of its pixels), the model (its cache key: file, size,
mtime, device, dtype) and the encoder's input size. Bounded: the least recently used
embeddings go first once ``max_entries`` is reached.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
import torch

from .automask import encode_image
from .models import LoadedModel


class EmbeddingCache:
    def __init__(self, max_entries: int = 8):
        self.max_entries = max_entries
        self._entries: "OrderedDict[tuple, tuple]" = OrderedDict()
        self._lock = threading.Lock()
        #: number of times the image encoder actually ran (tests and benchmarks read it)
        self.encoder_calls = 0

    @staticmethod
    def image_key(image: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(image).view(np.uint8).data).hexdigest() + str(image.shape)

    def get(self, model: LoadedModel, image: np.ndarray) -> tuple[torch.Tensor, tuple]:
        """(embedding, resized input size) for an RGB uint8 image, encoding it only if needed."""
        key = (model.key or id(model.module), model.runner.image_encoder.img_size, self.image_key(image))
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit
        value = encode_image(model.runner, image)
        with self._lock:
            self.encoder_calls += 1
            self._entries[key] = value
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


embeddings = EmbeddingCache()
