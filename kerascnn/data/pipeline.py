"""Input pipelines: batches from a `Split` with shuffling, decoding, augmentation and prefetching.

A `Batches` is a ``keras.utils.PyDataset``: with ``workers`` > 1 Keras runs that many threads that
prepare upcoming batches while the model trains on the current one, on every backend.
``model.fit`` takes `Batches.for_fit`.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import keras
import numpy as np

from kerascnn import keras_compat
from kerascnn.data.augment import Augmenter, LabelMixing
from kerascnn.data.dataset import Split
from kerascnn.data.images import read_image

log = logging.getLogger("kerascnn")


def default_workers(split: Split) -> int:
    """Threads preparing batches: several for files (decoding), one for arrays."""
    return min(8, 2 * (os.cpu_count() or 1)) if split.streamed else 1


class Batches(keras.utils.PyDataset):
    """Batches of ``(images, one-hot labels[, sample weights])`` from a `Split`.

    Images are uint8 (without augmentation other than flips) or float32 (0..255). ``shape`` is the
    (h, w, c) at which files are decoded; a split with a decoded-image cache (``split.decoded``) is
    read from it. With ``shuffle`` the order is redrawn, seeded, every epoch. ``augment`` (an
    `kerascnn.data.augment.Augmenter`, from ``augmentation``) and then ``mixing`` run on each batch,
    both drawing from a generator seeded by the seed, the epoch and the batch. Unreadable files
    are dropped from their batch with one warning each. With ``multiple`` > 1 (data parallelism)
    every batch has sample weights and a size divisible by ``multiple``: the last one is padded with
    weight-0 copies. With ``mirror`` every image is flipped horizontally (flip test-time augmentation).
    """

    def __init__(
        self,
        split: Split,
        shape: tuple[int, int, int],
        num_classes: int,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: Augmenter | None = None,
        mixing: LabelMixing | None = None,
        class_weights: np.ndarray | None = None,
        workers: int | None = None,
        multiple: int = 1,
        mirror: bool = False,
    ) -> None:
        workers = workers or default_workers(split)
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max(4, 2 * workers))
        self.split, self.shape, self.num_classes = split, tuple(shape), num_classes
        self.batch_size, self.shuffle = batch_size, shuffle
        self.augment, self.mixing = augment, mixing
        self.class_weights, self.multiple, self.mirror = class_weights, multiple, mirror
        self._seed, self._epoch = seed, 0
        self._order = np.random.default_rng([seed, 0]).permutation(len(split)) if shuffle else np.arange(len(split))
        self.skipped: set[str] = set()
        self._resident: tuple | None = None  # (device, images, labels, one-hot rows, class weights) of `on_device`

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def on_epoch_end(self) -> None:
        self.start_at(self._epoch + 1)

    def start_at(self, epoch: int) -> None:
        """Serve epoch ``epoch`` (0-based) next: its order and augmentations depend on the seed and the epoch
        alone, so a resumed run sees the batches it would have seen (`kerascnn.training.EpochSeeds`
        calls this as each epoch begins)."""
        self._epoch = epoch
        if self.shuffle:
            self._order = np.random.default_rng([self._seed, epoch]).permutation(len(self.split))

    def _images(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.split.streamed:
            return self.split.images[index], index
        if self.split.decoded is not None:
            readable = self.split.decoded.readable[index]
            for path in self.split.paths[index[~readable]]:
                self._skip(path, "it failed to decode into the cache")
            return np.asarray(self.split.decoded.pixels[index[readable]]), index[readable]  # a copy: fancy index
        images, kept = [], []
        for i in index:
            path = self.split.paths[i]
            try:
                images.append(read_image(path, self.shape))
                kept.append(i)
            except Exception as exc:  # noqa: BLE001 - a file that went bad after loading
                self._skip(path, exc)
        return np.stack(images) if images else np.zeros((0, *self.shape), np.uint8), np.asarray(kept, np.int64)

    def _skip(self, path: str, why: object) -> None:
        if path not in self.skipped:
            log.warning("skipping unreadable image %s (%s)", path, why)
            self.skipped.add(path)

    RESIDENT_BYTES = 1 << 30  # the largest in-memory split `for_fit` copies to a GPU (at most 1/8 of its free memory)

    def for_fit(self) -> Any:
        """What ``model.fit`` should iterate (training and validation batches): ``self``, except on
        the torch backend for batches prepared on the training thread (one worker, as for in-memory
        splits): a torch ``DataLoader`` of the same batches as tensors, which Keras passes through
        without converting each batch again (docs/design/fast-path.md). Handing out the last batch
        ends the epoch (`on_epoch_end`), as Keras' adapter does.
        On a GPU an in-memory split without host-side augmentation lives on the device (`on_device`);
        other batches come in pinned memory, so their copy to the device does not wait."""
        if keras.backend.backend() != "torch" or self.workers > 1 or self.use_multiprocessing:
            return self
        import torch
    
        device = torch.device(keras_compat.torch_device_name())
        if device.type == "cuda" and self._fits_on(device):
            return self.on_device(device)
        batches = self

        class Tensors(torch.utils.data.IterableDataset):
            def __len__(self) -> int:
                return len(batches)

            def __iter__(self):
                for i in range(len(batches)):
                    batch = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in batches[i])
                    if i == len(batches) - 1:  # Keras asks for no batch after the last one
                        batches.on_epoch_end()
                    yield batch

        return torch.utils.data.DataLoader(Tensors(), batch_size=None, pin_memory=device.type == "cuda")

    def _fits_on(self, device: Any) -> bool:
        """Whether `on_device` can serve these batches: an in-memory split of at most `RESIDENT_BYTES`
        (and an eighth of a GPU's free memory), no augmentation or label mixing (they run on the
        host), no padding to a multiple of the replicas."""
        if self.split.streamed or self.augment is not None or self.mixing or self.multiple > 1:
            return False
        limit = self.RESIDENT_BYTES
        if device.type == "cuda":
            import torch

            limit = min(limit, torch.cuda.mem_get_info(device)[0] // 8)
        return self.split.images.nbytes <= limit

    def on_device(self, device: Any) -> Any:
        """The batches of ``self[i]``, epoch by epoch, gathered on the torch ``device`` from one copy
        of the split made there (once per `Batches`): each epoch copies its order there, and no step
        waits for the host (plain PyTorch's way with a dataset that fits on the GPU). For in-memory
        splits without augmentation or label mixing (`for_fit` checks)."""
        import torch

        if self._resident is None or self._resident[0] != device:  # copies (torch.tensor): the arrays may be read-only
            weights = None if self.class_weights is None else torch.tensor(self.class_weights, dtype=torch.float32,
                                                                           device=device)
            self._resident = (device, torch.tensor(self.split.images, device=device),
                              torch.tensor(self.split.labels, device=device),
                              torch.eye(self.num_classes, dtype=torch.float32, device=device), weights)
        _, images, labels, one_hot, class_weights = self._resident
        batches, size = self, self.batch_size

        class Resident(torch.utils.data.IterableDataset):
            def __len__(self) -> int:
                return len(batches)

            def __iter__(self):
                n = len(batches)
                if n == 0:
                    return
                order = np.concatenate([batches._index(i) for i in range(n)])
                order = torch.from_numpy(order).to(device)
                for i in range(n):
                    index = order[i * size:(i + 1) * size]
                    x, label = images[index], labels[index]
                    if batches.mirror:
                        x = x.flip(2)
                    if i == n - 1:
                        batches.on_epoch_end()
                    yield (x, one_hot[label]) if class_weights is None else (x, one_hot[label], class_weights[label])

        return torch.utils.data.DataLoader(Resident(), batch_size=None)

    def _index(self, batch: int) -> np.ndarray:
        """The split's indices in batch ``batch`` of this epoch, sorted (reading in order is faster)."""
        return np.sort(self._order[batch * self.batch_size : (batch + 1) * self.batch_size])

    def __getitem__(self, batch: int):
        x, index = self._images(self._index(batch))
        if self.mirror:
            x = x[:, :, ::-1]
        rng = np.random.default_rng([self._seed, self._epoch, batch])
        if self.augment is not None:
            x = self.augment(x, rng)
        labels = self.split.labels[index]
        y = np.eye(self.num_classes, dtype="float32")[labels]
        if self.mixing:
            x, y = self.mixing(x, y, rng)
        weights = None if self.class_weights is None else self.class_weights[labels].astype("float32")
        if self.multiple > 1:
            weights = np.ones(len(labels), "float32") if weights is None else weights
            pad = np.arange(-len(labels) % self.multiple) % max(1, len(labels))
            x, y, weights = (np.concatenate([a, a[pad]]) for a in (x, y, weights))
            weights[len(labels):] = 0.0
        return (x, y) if weights is None else (x, y, weights)

