"""Dataset names users type, and `load`, which turns one into train/val/test splits."""

from __future__ import annotations

from collections.abc import Callable

from kerascnn.config import parse_split
from kerascnn.data.dataset import Dataset, Split
from kerascnn.data.sources import Source, load_csv, load_digits, load_fashion_mnist, load_folder
from kerascnn.data.splits import carve_validation, check_nonempty, stratified_split
from kerascnn.errors import KerascnnError, unknown_name

# name -> loader(data_dir, channels)
DATASETS: dict[str, Callable[[str | None, int | None], Source]] = {
    "fashion_mnist": lambda data_dir, channels: load_fashion_mnist(data_dir),
    "digits": lambda data_dir, channels: load_digits(),
}
# prefix -> loader(path, channels), for names such as folder:PATH
PREFIXED: dict[str, Callable[[str, int | None], Source]] = {
    "folder": load_folder,
    "csv": load_csv,
}
# split used when a dataset has no official one and --split is not given
DEFAULT_SPLITS: dict[str, str] = {}
FALLBACK_SPLIT = "0.7,0.15,0.15"
DEFAULT_FILE_IMAGE_SIZE = 64


def dataset_names() -> list[str]:
    """Every dataset name accepted by `load`, prefixed ones shown as ``prefix:PATH``."""
    return list(DATASETS) + [f"{p}:PATH" for p in PREFIXED]


def get_source(name: str, data_dir: str | None = None, channels: int | None = None) -> Source:
    """Run the loader registered for ``name``."""
    prefix, _, rest = name.partition(":")
    if rest and prefix in PREFIXED:
        return PREFIXED[prefix](rest, channels)
    if name in DATASETS:
        return DATASETS[name](data_dir, channels)
    raise unknown_name("dataset", name, dataset_names())


def load(
    name: str,
    *,
    data_dir: str | None = None,
    split: str | None = None,
    val_split: float = 0.1,
    seed: int = 0,
    image_size: int | None = None,
    channels: int | None = None,
) -> Dataset:
    """Load dataset ``name`` as seeded, stratified train/val/test splits.

    Official splits are used when the data has them, with validation carved from train
    (``val_split`` of each class) when it has none. ``split`` (``"300,75,75"`` per class or
    ``"0.7,0.15,0.15"``) re-splits all of the data instead. File datasets are decoded at
    ``image_size`` x ``image_size`` with ``channels`` (default: 1 if every image is grey, else 3).
    """
    source = get_source(name, data_dir, channels)
    notes = list(source.notes)
    parts = source.splits
    if split is not None or "train" not in parts:
        if split is None:
            split = DEFAULT_SPLITS.get(name, FALLBACK_SPLIT)
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
    check_nonempty(len(train), len(val), len(test), name)
    if train.streamed:
        size = image_size or DEFAULT_FILE_IMAGE_SIZE
        shape = (size, size, source.channels or 3)
    else:
        shape = tuple(train.images.shape[1:])
    return Dataset(name, list(source.class_names), train, val, test, shape,  # type: ignore[arg-type]
                   skipped_files=source.skipped_files, notes=notes)

