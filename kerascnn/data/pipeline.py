"""Input pipelines: batches from a `Split` with shuffling, decoding, augmentation and prefetching.

A `Batches` is a ``keras.utils.PyDataset``: Keras runs ``workers`` threads that prepare upcoming
batches while the model trains on the current one, on every backend.
"""

from __future__ import annotations

import logging
import math
import os

import keras
import numpy as np

from kerascnn.data.dataset import Split
from kerascnn.data.images import read_image

log = logging.getLogger("kerascnn")


def augmentation(
    preset: str = "none",
    *,
    flip: bool = False,
    rotate: float = 0.0,
    translate: float = 0.0,
    channels: int = 3,
    seed: int | None = None,
) -> keras.layers.Pipeline | None:
    """Keras augmentation layers for ``preset`` (none, basic, strong) plus the single flags.

    ``rotate`` is in degrees, ``translate`` a fraction of the image size. Returns None when
    nothing is asked for. Inputs and outputs are float pixels in 0..255.
    """
    L = keras.layers
    chosen: dict[str, keras.layers.Layer] = {}
    if preset in ("basic", "strong") or flip:
        chosen["flip"] = L.RandomFlip("horizontal", seed=seed)
    if preset == "strong":
        rotate, translate = max(rotate, 15.0), max(translate, 0.1)
        chosen["zoom"] = L.RandomZoom(0.1, fill_mode="constant", seed=seed)
        if channels == 3:
            chosen["color"] = L.RandomColorJitter(value_range=(0, 255), brightness_factor=0.2,
                                                  contrast_factor=0.2, saturation_factor=(0.4, 0.6), seed=seed)
        else:
            chosen["contrast"] = L.RandomContrast(0.2, value_range=(0, 255), seed=seed)
    elif preset == "basic":
        translate = max(translate, 0.1)
    if rotate:
        chosen["rotate"] = L.RandomRotation(rotate / 360.0, fill_mode="constant", seed=seed)
    if translate:
        chosen["translate"] = L.RandomTranslation(translate, translate, fill_mode="constant", seed=seed)
    return L.Pipeline(list(chosen.values()), name="augmentation") if chosen else None


def default_workers(split: Split) -> int:
    """Threads preparing batches: several for files (decoding), one for arrays."""
    return min(8, 2 * (os.cpu_count() or 1)) if split.streamed else 1


class Batches(keras.utils.PyDataset):
    """Batches of ``(images, one-hot labels[, sample weights])`` from a `Split`.

    Images are uint8 (array splits without augmentation other than flips) or float32 (0..255).
    ``shape`` is the (h, w, c) at which files are decoded. With ``shuffle`` the order is redrawn,
    seeded, every epoch. A horizontal ``RandomFlip`` in ``augment`` runs as a NumPy flip of each
    image with probability 1/2 (seeded per epoch and batch; a Keras layer call costs ~10 ms a batch).
    Unreadable files met while streaming are dropped from their batch with a warning. With
    ``multiple`` > 1 (data parallelism) every batch has sample weights and a size divisible by
    ``multiple``: the last one is padded with weight-0 copies. With ``mirror`` every image is
    flipped horizontally (flip test-time augmentation).
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
        augment: keras.layers.Layer | None = None,
        class_weights: np.ndarray | None = None,
        workers: int | None = None,
        multiple: int = 1,
        mirror: bool = False,
    ) -> None:
        workers = workers or default_workers(split)
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max(4, 2 * workers))
        self.split, self.shape, self.num_classes = split, tuple(shape), num_classes
        self.batch_size, self.shuffle = batch_size, shuffle
        self.flip, self.augment = _split_flip(augment)
        self.class_weights, self.multiple, self.mirror = class_weights, multiple, mirror
        self._seed, self._epoch = seed, 0
        self._order = np.random.default_rng([seed, 0]).permutation(len(split)) if shuffle else np.arange(len(split))
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def on_epoch_end(self) -> None:
        self.start_at(self._epoch + 1)

    def start_at(self, epoch: int) -> None:
        """Serve epoch ``epoch`` (0-based) next: its order and flips depend on the seed and the epoch
        alone, so a resumed run sees the batches it would have seen (`kerascnn.training.EpochOrder`
        calls this as each epoch begins)."""
        self._epoch = epoch
        if self.shuffle:
            self._order = np.random.default_rng([self._seed, epoch]).permutation(len(self.split))

    def _images(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.split.streamed:
            return self.split.images[index], index
        images, kept = [], []
        for i in index:
            path = self.split.paths[i]
            try:
                images.append(read_image(path, self.shape))
                kept.append(i)
            except Exception as exc:  # noqa: BLE001 - a file that went bad after loading
                if path not in self.skipped:
                    log.warning("skipping unreadable image %s (%s)", path, exc)
                    self.skipped.add(path)
        return np.stack(images) if images else np.zeros((0, *self.shape), np.uint8), np.asarray(kept, np.int64)

    def __getitem__(self, batch: int):
        index = np.sort(self._order[batch * self.batch_size : (batch + 1) * self.batch_size])
        x, index = self._images(index)
        if self.mirror:
            x = x[:, :, ::-1]
        if self.flip and len(x):
            flipped = np.random.default_rng([self._seed, self._epoch, batch]).random(len(x)) < 0.5
            x[flipped] = x[flipped, :, ::-1]
        if self.augment is not None and len(x):
            x = keras.ops.convert_to_numpy(self.augment(x.astype("float32"), training=True))
        labels = self.split.labels[index]
        y = np.eye(self.num_classes, dtype="float32")[labels]
        weights = None if self.class_weights is None else self.class_weights[labels].astype("float32")
        if self.multiple > 1:
            weights = np.ones(len(labels), "float32") if weights is None else weights
            pad = np.arange(-len(labels) % self.multiple) % max(1, len(labels))
            x, y, weights = (np.concatenate([a, a[pad]]) for a in (x, y, weights))
            weights[len(labels):] = 0.0
        return (x, y) if weights is None else (x, y, weights)


def _split_flip(augment: keras.layers.Layer | None) -> tuple[bool, keras.layers.Layer | None]:
    """(whether ``augment`` starts with a horizontal ``RandomFlip``, the layers after it)."""
    layers = list(getattr(augment, "layers", []))
    if layers and isinstance(layers[0], keras.layers.RandomFlip) and layers[0].mode == "horizontal":
        rest = layers[1:]
        return True, keras.layers.Pipeline(rest, name=augment.name) if rest else None
    return False, augment
