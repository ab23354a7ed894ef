"""The records a loader returns: `Split` (one split's images and labels) and `Dataset`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerascnn.data.cache import Decoded
from kerascnn.data.images import read_images


@dataclass
class Split:
    """Images and integer labels of one split.

    Either ``images`` holds uint8 pixels of shape (n, height, width, channels), or ``paths``
    holds n image files that are decoded on the fly (streamed) at the dataset's image shape.
    ``decoded`` holds those files' pixels once the decoded-image cache has them
    (`kerascnn.data.cache.decode_splits`).
    """

    labels: np.ndarray
    images: np.ndarray | None = None
    paths: np.ndarray | None = None
    decoded: Decoded | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if (self.images is None) == (self.paths is None):
            raise ValueError("a Split holds either images or paths")
        if self.paths is not None:
            self.paths = np.asarray(self.paths, dtype=object)
        if len(self.source) != len(self.labels):
            raise ValueError(f"{len(self.source)} images but {len(self.labels)} labels")

    @property
    def source(self) -> np.ndarray:
        return self.images if self.images is not None else self.paths

    @property
    def streamed(self) -> bool:
        return self.paths is not None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Split:
        """The sub-split at ``index`` (an integer array)."""
        if self.images is not None:
            return Split(self.labels[index], images=self.images[index])
        return Split(self.labels[index], paths=self.paths[index])

    def counts(self, num_classes: int) -> list[int]:
        """Images per class."""
        return np.bincount(self.labels, minlength=num_classes).tolist()

    def pixels(self, index: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
        """uint8 pixels of the images at ``index``, decoding files at ``shape`` (h, w, c)."""
        if self.images is not None:
            return self.images[index]
        if self.decoded is not None:
            return np.asarray(self.decoded.pixels[index])
        return read_images(self.paths[index], shape)

    def fingerprint(self) -> str:
        """A short hash of which images (pixels, or the last two parts of each file path) carry which
        labels: equal fingerprints, same test set."""
        digest = hashlib.sha1(self.labels.tobytes())
        if self.images is not None:
            digest.update(np.ascontiguousarray(self.images).tobytes())
        else:
            digest.update("\n".join("/".join(Path(p).parts[-2:]) for p in self.paths).encode())
        return digest.hexdigest()[:16]

    @staticmethod
    def concat(splits: list[Split]) -> Split:
        labels = np.concatenate([s.labels for s in splits])
        if all(s.images is not None for s in splits):
            return Split(labels, images=np.concatenate([s.images for s in splits]))
        if all(s.paths is not None for s in splits):
            return Split(labels, paths=np.concatenate([s.paths for s in splits]))
        raise ValueError("cannot pool array splits with file splits")


@dataclass
class Dataset:
    """Train, validation and test splits with their class names.

    ``image_shape`` is (height, width, channels) of what the splits yield: the native shape of
    an array dataset, the decoding size of a file dataset. ``skipped_files`` names unreadable
    images left out; ``notes`` says how the splits were made; ``leakage`` counts the exact duplicate
    files removed (`kerascnn.data.leakage`; None for array datasets, which are not checked).
    """

    name: str
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    image_shape: tuple[int, int, int]
    skipped_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    leakage: dict | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def streamed(self) -> bool:
        return self.train.streamed

    def statistics_sample(self, seed: int, size: int = 512) -> np.ndarray:
        """Training images to estimate normalisation statistics from: all of an array dataset,
        ``size`` decoded at random (seeded) from a file dataset."""
        if not self.streamed:
            return self.train.images
        candidates = np.arange(len(self.train))
        if self.train.decoded is not None:  # not the zeros of files that failed to decode
            candidates = candidates[self.train.decoded.readable]
        sample = np.random.default_rng(seed).choice(candidates, min(len(candidates), size), replace=False)
        return self.train.pixels(np.sort(sample), self.image_shape)

    def summary(self) -> dict:
        """Sizes and per-class counts of each split, for reports."""
        return {
            "name": self.name,
            "class_names": self.class_names,
            "image_shape": list(self.image_shape),
            "sizes": {s: len(getattr(self, s)) for s in ("train", "val", "test")},
            "per_class": {s: getattr(self, s).counts(self.num_classes) for s in ("train", "val", "test")},
            "skipped_files": self.skipped_files,
            "notes": self.notes,
        }
