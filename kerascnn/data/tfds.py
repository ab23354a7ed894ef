"""``tfds:NAME[:CONFIG]``: any TensorFlow Datasets image-classification set (extra ``[tfds]``).

The dataset's own splits are used (``train``, ``validation``, ``test``); validation is carved from
train when it has none. Images are decoded once into memory: at their own size when they all share
one (the model resizes them), else centre-cropped and resized to ``image_size``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from kerascnn.data.dataset import Split
from kerascnn.data.images import to_array
from kerascnn.data.sources import Source
from kerascnn.errors import KerascnnError

SPLITS = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}


def _fit(image: np.ndarray, size: int | None, channels: int) -> np.ndarray:
    pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    if size and pil.size != (size, size):
        pil = ImageOps.fit(pil, (size, size), Image.Resampling.BILINEAR)
    return to_array(pil, channels)


def load_tfds(spec: str, data_dir: str | None, channels: int | None, image_size: int) -> Source:
    """Load ``NAME[:CONFIG]`` through ``tensorflow_datasets`` (downloads and prepares it the first time)."""
    name, _, config = spec.partition(":")
    full = f"{name}/{config}" if config else name
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise KerascnnError("tfds:NAME needs TensorFlow Datasets: pip install 'kerascnn[tfds]'") from None
    try:
        builder = tfds.builder(full, data_dir=data_dir)
        builder.download_and_prepare()
    except Exception as exc:  # noqa: BLE001 - tfds raises many kinds; all mean "not available here"
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise KerascnnError(f"could not load tfds:{spec} ({reason}); the first use needs internet, "
                            "or pass --data-dir with a prepared copy") from None
    info = builder.info
    keys = info.supervised_keys
    if not keys or len(keys) < 2:
        raise KerascnnError(f"tfds:{spec} has no (image, label) supervised keys; it is not a classification set")
    class_names = list(info.features[keys[1]].names)
    wanted = {split: SPLITS[split] for split in info.splits if split in SPLITS}
    if "train" not in wanted.values():
        raise KerascnnError(f"tfds:{spec} has no train split (it has {', '.join(info.splits)})")
    raw: dict[str, tuple[list[np.ndarray], list[int]]] = {}
    for split, ours in wanted.items():
        images, labels = [], []
        for image, label in tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True)):
            images.append(np.asarray(image, dtype=np.uint8).reshape(*np.shape(image)[:2], -1))
            labels.append(int(label))
        raw[ours] = (images, labels)
    shapes = {im.shape for images, _ in raw.values() for im in images}
    if channels is None:
        channels = 1 if all(s[-1] == 1 for s in shapes) else 3
    size = None if len({s[:2] for s in shapes}) == 1 else image_size  # resize only mixed sizes
    splits = {ours: Split(np.array(labels), images=np.stack([_fit(im, size, channels) for im in images]))
              for ours, (images, labels) in raw.items()}
    return Source(splits, class_names, channels=channels, notes=[f"TensorFlow Datasets {full}"])
