"""Exact duplicate images inside and across the splits of a file dataset, found by the hash of each
file's bytes (`kerascnn.data.images.scan_images`): a test image that is also a training image makes
the test score a memory test, so it is removed from training, and nothing is silent."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from kerascnn.data.dataset import Split

log = logging.getLogger("kerascnn")
KEEP_ORDER = ("test", "val", "all", "train")  # a duplicate stays in the first of these and leaves the others
EXAMPLES = 5


def remove_duplicates(splits: dict[str, Split], digests: dict[str, str], class_names: list[str], origin: str
                      ) -> tuple[dict[str, Split], dict[str, Any]]:
    """A loader's file ``splits`` (official ``train``/``val``/``test``, or ``all`` before it is split)
    with every exact duplicate kept once: inside a split its first copy, across splits the copy in
    test, else validation, so training loses it. Returns them and the record ``metrics.json`` keeps
    as ``leakage``: counts within and across splits, and examples. An image under two labels is used
    under neither: every copy is dropped, with a warning naming them (``conflicting_labels``)."""
    first: dict[str, tuple[str, str, int]] = {}  # digest -> (split, path, label) of the copy kept
    names = [name for name in KEEP_ORDER if name in splits]
    within = {name: 0 for name in names}
    across: dict[str, int] = {}
    examples: list[dict[str, str]] = []
    conflicts: dict[str, list[tuple[str, str, str]]] = {}  # digest -> (split, path, label) of every copy
    kept_splits = dict(splits)
    for name in names:
        split = splits[name]
        keep = []
        for i, (path, label) in enumerate(zip(split.paths, split.labels)):
            digest = digests.get(path)
            if digest is None or digest not in first:
                if digest is not None:
                    first[digest] = (name, path, int(label))
                keep.append(i)
                continue
            kept_in, kept_path, kept_label = first[digest]
            if kept_label != label:
                conflicts.setdefault(digest, [(kept_in, str(kept_path), class_names[kept_label])]).append(
                    (name, str(path), class_names[label]))
                continue
            if kept_in == name:
                within[name] += 1
            else:
                across[f"{name} in {kept_in}"] = across.get(f"{name} in {kept_in}", 0) + 1
                if len(examples) < EXAMPLES:
                    examples.append({"removed_from": name, "file": str(path), "same_as": str(kept_path),
                                     "kept_in": kept_in})
        kept_splits[name] = split.take(np.array(keep, dtype=np.int64))
    if conflicts:  # the first copy was kept before the conflict showed: drop it too
        dropped = {path for copies in conflicts.values() for _, path, _ in copies}
        for name in names:
            split = kept_splits[name]
            kept_splits[name] = split.take(np.flatnonzero([str(p) not in dropped for p in split.paths]))
        copies = next(iter(conflicts.values()))
        log.warning("%s: %d image(s) carry two labels and are left out, e.g. %s", origin, len(conflicts),
                    " and ".join(f"{path} ({label})" for _, path, label in copies[:2]))
    if sum(within.values()):
        log.warning("%s: %d exact duplicate image(s) inside a split dropped (%s)", origin, sum(within.values()),
                    ", ".join(f"{n} {c}" for n, c in within.items() if c))
    if across:
        log.warning("%s: %d image(s) were in two splits (%s) and were removed from the later one, e.g. %s "
                    "is the same file as %s", origin, sum(across.values()),
                    ", ".join(f"{k}: {v}" for k, v in across.items()), examples[0]["file"], examples[0]["same_as"])
    conflicting = [[{"split": n, "file": p, "label": c} for n, p, c in copies] for copies in conflicts.values()]
    record = {"duplicates_within_splits": within, "duplicates_across_splits": across,
              "removed": sum(within.values()) + sum(across.values()) + sum(map(len, conflicting)),
              "conflicting_labels": conflicting[:EXAMPLES], "examples": examples}
    return kept_splits, record
