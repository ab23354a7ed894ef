"""Where each dataset comes from: loaders that return a `Source` (splits before re-splitting)."""

from __future__ import annotations

import csv
import gzip
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerascnn.data.dataset import Split
from kerascnn.data.images import grey_only, is_image_file, scan_images
from kerascnn.errors import KerascnnError

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}  # fmt: skip


log = logging.getLogger("kerascnn")


@dataclass
class Source:
    """What a loader found: named splits (``train``/``val``/``test``, or ``all`` when the data
    has no official split, to be split by ``default_split``), class names, the channel count of
    file datasets, and the unreadable files or rows left out."""

    splits: dict[str, Split]
    class_names: list[str]
    channels: int | None = None
    skipped_files: list[str] = field(default_factory=list)  # unreadable files (or rows) left out
    notes: list[str] = field(default_factory=list)
    default_split: str = "0.7,0.15,0.15"
    digests: dict[str, str] = field(default_factory=dict)  # a file's content hash, by path (file datasets)


def data_roots(data_dir: str | None, name: str) -> list[Path]:
    """Folders searched for a dataset called ``name``, most specific first: ``--data-dir``,
    ``$KERASCNN_DATA/<name>``, ``$KERASCNN_DATA``, ``~/.kerascnn/datasets/<name>``."""
    roots = []
    if data_dir:
        roots.append(Path(data_dir).expanduser())
    if os.environ.get("KERASCNN_DATA"):
        base = Path(os.environ["KERASCNN_DATA"]).expanduser()
        roots += [base / name, base]
    roots.append(Path.home() / ".kerascnn" / "datasets" / name)
    return roots


def find_root(name: str, data_dir: str | None, found: Callable[[Path], bool], layout: str, source: str) -> Path:
    """The first of `data_roots` holding dataset ``name`` (``found`` says whether a folder does);
    otherwise an error naming where it looked, the ``layout`` expected and the ``source``."""
    roots = data_roots(data_dir, name)
    for root in roots:
        if root.is_dir() and found(root):
            return root
    looked = ", ".join(str(r) for r in roots)
    raise KerascnnError(f"{name} not found (looked in {looked}); get it from {source}, arrange it as {layout} "
                        f"and pass --data-dir DIR or put it in ~/.kerascnn/datasets/{name}")


# --- Fashion-MNIST ---------------------------------------------------------------------------

def fashion_mnist_dirs(data_dir: str | None) -> list[Path]:
    """Folders searched for the four Fashion-MNIST ``.gz`` files, in order."""
    return data_roots(data_dir, "fashion-mnist") + [
        Path("/usr/share/datasets/fashion-mnist"),
        Path.home() / ".keras" / "datasets" / "fashion-mnist",
    ]


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_fashion_mnist(data_dir: str | None = None) -> Source:
    """Fashion-MNIST from a local copy, else through the Keras download (needs internet)."""
    needed = [f for pair in FASHION_MNIST_FILES.values() for f in pair]
    dirs = fashion_mnist_dirs(data_dir)
    found = next((d for d in dirs if all((d / f).is_file() for f in needed)), None)
    if found is not None:
        splits = {}
        for split, (images, labels) in FASHION_MNIST_FILES.items():
            x = _read_idx(found / images, 16).reshape(-1, 28, 28, 1)
            splits[split] = Split(_read_idx(found / labels, 8), images=x)
        return Source(splits, FASHION_MNIST_CLASSES, notes=[f"Fashion-MNIST read from {found}"])
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same advice
        looked = ", ".join(str(d) for d in dirs)
        raise KerascnnError(
            f"Fashion-MNIST not found (looked in {looked}) and the download failed ({type(exc).__name__}); "
            "install it with `apt-get install dataset-fashion-mnist`, or put the four .gz files in "
            "$KERASCNN_DATA/fashion-mnist"
        ) from exc
    splits = {"train": Split(y_train, images=x_train[..., None]), "test": Split(y_test, images=x_test[..., None])}
    return Source(splits, FASHION_MNIST_CLASSES, notes=["Fashion-MNIST downloaded by Keras"])


# --- scikit-learn digits -----------------------------------------------------------------------

def load_digits() -> Source:
    """scikit-learn's 1,797 real 8x8 handwritten digits (values 0..16 scaled to 0..255)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return Source({"all": Split(bunch.target, images=images)}, [str(d) for d in range(10)])


def read_csv_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV with a header holding ``required`` columns (names compared case-insensitively;
    a UTF-8 byte-order mark, as Excel writes, is read as such)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in reader.fieldnames or []]
        missing = [c for c in required if c not in fields]
        if missing:
            raise KerascnnError(f"{path} needs columns {','.join(required)}; it has {','.join(fields)}")
        return [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]


# --- image files: folder:PATH and csv:PATH -----------------------------------------------------

def file_source(records: dict[str, list[tuple[str, str]]], class_names: list[str] | None,
                channels: int | None, origin: str) -> Source:
    """Build a `Source` from ``{split: [(path, class name), ...]}``, leaving out unreadable files."""
    all_paths = [p for rows in records.values() for p, _ in rows]
    if not all_paths:
        expected = "rows path,label[,split]" if origin.endswith(".csv") else "one sub-folder of images per class"
        raise KerascnnError(f"no image files found in {origin}; expected {expected}")
    check_labels([c for rows in records.values() for _, c in rows], origin)
    records = unique_rows(records, origin)
    all_paths = [p for rows in records.values() for p, _ in rows]
    digests = scan_images(all_paths)
    bad = {p for p, digest in digests.items() if digest is None}
    if len(bad) == len(all_paths):
        raise KerascnnError(f"none of the {len(all_paths)} image files in {origin} could be read "
                            f"(e.g. {all_paths[0]}); give image files PIL can open")
    names = class_names or sorted({c for rows in records.values() for _, c in rows})
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted({c for rows in records.values() for _, c in rows} - set(index))
    if unknown:
        raise KerascnnError(f"{origin}: unknown class(es) {', '.join(unknown)}; expected {', '.join(names)}")
    splits = {}
    for split, rows in records.items():
        kept = [(p, c) for p, c in rows if p not in bad]
        splits[split] = Split(np.array([index[c] for _, c in kept], dtype=np.int64),
                              paths=np.array([p for p, _ in kept], dtype=object))
    if channels is None:
        channels = 1 if grey_only([p for p in all_paths if p not in bad]) else 3
    notes = [f"{len(bad)} unreadable image file(s) skipped"] if bad else []
    return Source(splits, names, channels=channels, skipped_files=sorted(bad), notes=notes,
                  digests={p: d for p, d in digests.items() if d is not None})


def check_labels(labels: list[str], origin: str) -> None:
    """Refuse labels that differ only in case or spaces (``Cat`` and ``cat``): one class written two ways."""
    by_key: dict[str, set[str]] = {}
    for label in set(labels):
        by_key.setdefault("".join(label.split()).casefold(), set()).add(label)
    clashes = sorted(sorted(names) for names in by_key.values() if len(names) > 1)
    if clashes:
        raise KerascnnError(f"{origin}: labels {' and '.join(map(repr, clashes[0]))} differ only in case or spaces; "
                            "write each class one way")


def unique_rows(records: dict[str, list[tuple[str, str]]], origin: str) -> dict[str, list[tuple[str, str]]]:
    """``records`` with each file once per split (its first listing, by resolved path); a file listed
    under two labels is refused. Listings again in the same split are dropped with one warning (a
    file in two splits is leakage, which `kerascnn.data.leakage` deals with)."""
    first: dict[str, tuple[str, str]] = {}  # resolved path -> (path, label) of its first listing
    seen: set[tuple[str, str]] = set()
    kept: dict[str, list[tuple[str, str]]] = {split: [] for split in records}
    again = []
    for split, rows in records.items():
        for path, label in rows:
            key = os.path.realpath(path)
            listed_path, listed_label = first.setdefault(key, (path, label))
            if listed_label != label:
                raise KerascnnError(f"{origin}: {path} is listed under two labels, {listed_label!r} and {label!r}; "
                                    "keep the right one")
            if (split, key) in seen:
                again.append(path)
                continue
            seen.add((split, key))
            kept[split].append((path, label))
    if again:
        log.warning("%s lists %d file(s) again in the same split (e.g. %s): each is used once", origin,
                    len(again), again[0])
    return kept


def class_folders(root: Path) -> dict[str, list[str]]:
    """``{class name: [image paths]}`` for each sub-folder of ``root`` that holds images; a
    sub-folder without any is left out with a warning."""
    classes = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(str(f) for f in sub.rglob("*") if f.is_file() and is_image_file(f))
        if files:
            classes[sub.name] = files
        else:
            log.warning("%s holds no image files; class %r left out", sub, sub.name)
    return classes


def load_folder(path: str, channels: int | None = None, class_names: list[str] | None = None) -> Source:
    """Images in one sub-folder per class, either directly under ``path`` or under split
    folders ``train/``, ``val/`` (or ``valid/``, ``validation/``) and ``test/``. Classes are
    sorted by name unless ``class_names`` gives their order."""
    root = Path(path).expanduser()
    split_dirs = {SPLIT_ALIASES[p.name.lower()]: p for p in root.iterdir()
                  if p.is_dir() and p.name.lower() in SPLIT_ALIASES}
    if "train" in split_dirs:
        per_split = {s: class_folders(d) for s, d in split_dirs.items()}
        names = class_names or sorted({c for classes in per_split.values() for c in classes})
        records = {s: [(f, c) for c, files in classes.items() for f in files] for s, classes in per_split.items()}
        return file_source(records, names, channels, str(root))
    classes = class_folders(root)
    records = {"all": [(f, c) for c, files in classes.items() for f in files]}
    return file_source(records, class_names or sorted(classes), channels, str(root))


def load_csv(path: str, channels: int | None = None) -> Source:
    """A CSV with columns ``path,label[,split]``; relative paths are taken from the CSV's folder."""
    csv_path = Path(path).expanduser()
    rows = read_csv_rows(csv_path, ("path", "label"))
    has_split = any(r.get("split") for r in rows)
    records: dict[str, list[tuple[str, str]]] = {}
    for i, row in enumerate(rows, start=2):
        split = "all"
        if has_split:
            split = SPLIT_ALIASES.get(row.get("split", "").lower())
            if split is None:
                raise KerascnnError(f"{csv_path} line {i}: split {row.get('split')!r} is not one of train, val, test")
        file = Path(row["path"])
        file = file if file.is_absolute() else csv_path.parent / file
        records.setdefault(split, []).append((str(file), row["label"]))
    if has_split and "train" not in records:
        raise KerascnnError(f"{csv_path} has a split column but no 'train' rows")
    return file_source(records, None, channels, str(csv_path))
