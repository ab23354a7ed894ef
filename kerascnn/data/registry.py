"""Dataset names users type, and `load`, which turns one into train/val/test splits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kerascnn.data import animals10, deep_weeds, fer2013
from kerascnn.data.animals10 import load_animals10
from kerascnn.data.dataset import Dataset, Split
from kerascnn.data.fer2013 import load_fer2013
from kerascnn.data.leakage import remove_duplicates
from kerascnn.data.sources import Source, load_csv, load_digits, load_fashion_mnist, load_folder
from kerascnn.data.splits import carve_validation, check_splits, parse_split, stratified_split
from kerascnn.data.tfds import load_tfds
from kerascnn.errors import KerascnnError, unknown_name

log = logging.getLogger("kerascnn")
DEFAULT_FILE_IMAGE_SIZE = 64  # what image files are decoded at when neither --image-size nor the model says


@dataclass(frozen=True)
class LoadOptions:
    """What a loader may use besides the dataset's name."""

    data_dir: str | None = None
    channels: int | None = None
    fold: int = 0
    image_size: int | None = None


DATASETS: dict[str, Callable[[LoadOptions], Source]] = {
    "fashion_mnist": lambda o: load_fashion_mnist(o.data_dir),
    "digits": lambda o: load_digits(),
    "animals10": lambda o: load_animals10(o.data_dir, o.channels),
    "deep_weeds": lambda o: deep_weeds.load_deep_weeds(o.data_dir, o.channels, o.fold),
    "fer2013": lambda o: load_fer2013(o.data_dir, o.channels),
}
# prefix -> loader(rest of the name, options), for names such as folder:PATH
PREFIXED: dict[str, Callable[[str, LoadOptions], Source]] = {
    "folder": lambda path, o: load_folder(path, o.channels),
    "csv": lambda path, o: load_csv(path, o.channels),
    "tfds": lambda spec, o: load_tfds(spec, o.data_dir, o.channels, o.image_size),
}
PREFIX_ARGS = {"folder": "PATH", "csv": "PATH", "tfds": "NAME[:CONFIG]"}
FOLDS = {"deep_weeds": deep_weeds.FOLDS}  # datasets with several official folds; the others have one
# datasets read only from a local copy (no download): name -> locate(data_dir), one error line if absent
LOCAL: dict[str, Callable[[str | None], Path]] = {"animals10": animals10.locate, "deep_weeds": deep_weeds.locate,
                                                  "fer2013": fer2013.locate}


def dataset_names() -> list[str]:
    """Every dataset name accepted by `load`, prefixed ones shown as ``prefix:PATH``."""
    return list(DATASETS) + [f"{p}:{PREFIX_ARGS[p]}" for p in PREFIXED]


def check(name: str, fold: int = 0, data_dir: str | None = None) -> None:
    """Raise `KerascnnError` unless `load` knows ``name`` (the error lists the valid names), the
    dataset has fold ``fold`` and, for one that is only read from disk, it is there (`LOCAL`)."""
    prefix, _, rest = name.partition(":")
    if not (name in DATASETS or (rest and prefix in PREFIXED)):
        raise unknown_name("dataset", name, dataset_names())
    if prefix == "folder" and not Path(rest).expanduser().is_dir():
        raise KerascnnError(f"folder {rest!r} does not exist; give folder:PATH with one sub-folder per class")
    if prefix == "csv" and not Path(rest).expanduser().is_file():
        raise KerascnnError(f"CSV file {rest!r} does not exist; give csv:PATH with columns path,label[,split]")
    folds = FOLDS.get(name, 1)
    if not (isinstance(fold, int) and 0 <= fold < folds):
        which = f"0..{folds - 1} for {name}" if folds > 1 else f"0: {name} has one split (folds: {', '.join(FOLDS)})"
        raise KerascnnError(f"--fold must be {which}, got {fold}", option="fold")
    if name in LOCAL:
        LOCAL[name](data_dir)


def get_source(name: str, options: LoadOptions) -> Source:
    """Run the loader registered for ``name``."""
    check(name, options.fold, options.data_dir)
    prefix, _, rest = name.partition(":")
    return DATASETS[name](options) if name in DATASETS else PREFIXED[prefix](rest, options)


def load(
    name: str,
    *,
    data_dir: str | None = None,
    split: str | None = None,
    val_split: float = 0.1,
    seed: int = 0,
    image_size: int | None = None,
    channels: int | None = None,
    fold: int = 0,
) -> Dataset:
    """Load dataset ``name`` as seeded, stratified train/val/test splits.

    Official splits are used when the data has them, with validation carved from train
    (``val_split`` of each class) when it has none; data without official splits gets its
    default split. ``split`` (``"300,75,75"`` per class or ``"0.7,0.15,0.15"``) re-splits all of
    the data instead. File datasets are decoded at ``image_size`` x ``image_size`` with
    ``channels`` (default: 1 if every image is grey, else 3). ``fold`` picks a fold of data that
    has several (deep_weeds).
    """
    image_size = image_size or DEFAULT_FILE_IMAGE_SIZE
    source = get_source(name, LoadOptions(data_dir, channels, fold, image_size))
    notes = list(source.notes)
    parts, leakage = source.splits, None
    if source.digests:  # before any splitting: a pooled duplicate could land in two splits
        parts, leakage = remove_duplicates(parts, source.digests, list(source.class_names), name)
        if leakage["removed"]:
            notes.append(f"{leakage['removed']} exact duplicate image(s) removed "
                         f"({sum(leakage['duplicates_across_splits'].values())} across splits)")
    if split is not None or "train" not in parts:
        if split is None:
            split = source.default_split
            notes.append(f"no official split: split {split} per class (train,val,test), seed {seed}")
        elif "train" in parts:
            notes.append(f"official splits pooled and re-split {split} per class, seed {seed}")
        pooled = Split.concat(list(parts.values()))
        (train, val, test), split_notes = stratified_split(pooled.labels, *parse_split(split), seed)
        notes += split_notes
        train, val, test = pooled.take(train), pooled.take(val), pooled.take(test)
    else:
        train, test = parts["train"], parts.get("test")
        if test is None:
            raise KerascnnError(f"dataset {name!r} has a train split but no test split; add one or pass --split")
        if "val" in parts:
            val = parts["val"]
        else:
            keep, carved = carve_validation(train.labels, val_split, seed)
            train, val = train.take(keep), train.take(carved)
            if len(carved):
                notes.append(f"validation carved from train: {val_split:g} of each class, seed {seed}")
    for warning in check_splits(train.labels, val.labels, test.labels, list(source.class_names), name):
        log.warning("%s: %s", name, warning)
        notes.append(warning)
    if train.streamed:
        shape = (image_size, image_size, source.channels or 3)
    else:
        shape = tuple(train.images.shape[1:])
    return Dataset(name, list(source.class_names), train, val, test, shape,  # type: ignore[arg-type]
                   skipped_files=source.skipped_files, notes=notes, leakage=leakage)
