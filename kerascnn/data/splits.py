"""Seeded, stratified train/validation/test splitting."""

from __future__ import annotations

import numpy as np

from kerascnn.errors import KerascnnError


def stratified_split(
    labels: np.ndarray, kind: str, sizes: tuple[float, float, float], seed: int
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], list[str]]:
    """Split indices of ``labels`` per class into train, val and test.

    ``kind`` is ``"counts"`` (``sizes`` are images per class) or ``"fractions"`` (of each class).
    A class with fewer images than the counts ask for is split in the same proportions, and a
    note says so. Returns the three sorted index arrays and the notes.
    """
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    short = []
    for cls in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == cls))
        n = len(index)
        if kind == "counts" and sum(sizes) > n:
            short.append(f"{int(cls)}:{n}")
            fractions = tuple(s / sum(sizes) for s in sizes)
        elif kind == "counts":
            fractions = None
        else:
            fractions = sizes
        if fractions is None:
            n_train, n_val, n_test = (int(s) for s in sizes)
        else:
            n_val, n_test = round(fractions[1] * n), round(fractions[2] * n)
            rest = n - n_val - n_test
            n_train = rest if sum(fractions) > 1 - 1e-6 else min(rest, round(fractions[0] * n))
        parts[0].append(index[:n_train])
        parts[1].append(index[n_train : n_train + n_val])
        parts[2].append(index[n_train + n_val : n_train + n_val + n_test])
    notes = []
    if short:
        notes.append(
            "classes with fewer images than the per-class counts "
            f"{'/'.join(str(int(s)) for s in sizes)} were split in the same proportions "
            f"(class:images {', '.join(short)})"
        )
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts), notes  # type: ignore[return-value]


def carve_validation(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``labels`` into (train, val), ``fraction`` of each class to val."""
    if fraction <= 0:
        return np.arange(len(labels)), np.array([], dtype=np.int64)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == cls))
        n_val = max(1, round(fraction * len(index))) if len(index) > 1 else 0
        val.append(index[:n_val])
        train.append(index[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def check_splits(train: np.ndarray, val: np.ndarray, test: np.ndarray, class_names: list[str], name: str) -> list[str]:
    """Raise a clear error unless the splits (their label arrays) can train and test a classifier:
    images in train and test, at least two classes with training images. Returns warnings for
    classes missing from a split."""
    if len(train) == 0 or len(test) == 0:
        raise KerascnnError(
            f"dataset {name!r} gave {len(train)} training and {len(test)} test images; "
            "it needs more images per class or a different --split"
        )
    trained = np.unique(train)
    if len(trained) < 2:
        found = ", ".join(class_names[i] for i in trained) or "none"
        raise KerascnnError(f"dataset {name!r} has training images of {len(trained)} class ({found}); a classifier "
                            "needs at least two classes with images")
    warnings = []
    for split, labels in (("training", train), ("validation", val), ("test", test)):
        if split == "validation" and len(labels) == 0:
            continue
        missing = sorted(set(range(len(class_names))) - set(np.unique(labels).tolist()))
        if missing:
            warnings.append(f"no {split} images of class(es) {', '.join(class_names[i] for i in missing)}")
    return warnings


def parse_split(text: str) -> tuple[str, tuple[float, float, float]]:
    """Parse ``--split``: per-class counts ``"300,75,75"`` or fractions ``"0.7,0.15,0.15"``.

    Returns ``("counts", (train, val, test))`` or ``("fractions", (train, val, test))``.
    """
    parts = [p.strip() for p in str(text).split(",")]
    hint = "use per-class counts like 300,75,75 or fractions like 0.7,0.15,0.15"
    if len(parts) != 3:
        raise KerascnnError(f"--split needs three values train,val,test, got {text!r}; {hint}", option="split")
    try:
        if all(p.isdigit() for p in parts):
            counts = tuple(float(int(p)) for p in parts)
            if counts[0] < 1 or counts[2] < 1:
                raise ValueError
            return "counts", counts  # type: ignore[return-value]
        fractions = tuple(float(p) for p in parts)
    except ValueError:
        raise KerascnnError(f"--split {text!r} is not valid; {hint}", option="split") from None
    if any(f < 0 for f in fractions) or fractions[0] <= 0 or fractions[2] <= 0 or sum(fractions) > 1 + 1e-6:
        raise KerascnnError(f"--split fractions must be >= 0 with train, test > 0 and sum <= 1, got {text!r}",
                            option="split")
    return "fractions", fractions  # type: ignore[return-value]
