"""Predicting on one's own image files with a saved ``model.keras`` (or a run folder)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from kerascnn.data.images import is_image_file, read_image
from kerascnn.errors import KerascnnError
from kerascnn.saving import load_model

log = logging.getLogger("kerascnn")


@dataclass
class Prediction:
    """Top-k labels of one image, most probable first."""

    path: str
    labels: list[str]
    probabilities: list[float]


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given, folders replaced by the image files under them (sorted)."""
    files: list[str] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files += sorted(str(p) for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.is_file():
            files.append(str(path))
        else:
            raise KerascnnError(f"{item!r} is neither an image file nor a folder")
    if not files:
        raise KerascnnError(f"no image files found in {', '.join(inputs)}")
    return files


def prepare(paths: list[str], shape: tuple[int | None, int | None, int], invert: bool = False
            ) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Decode ``paths`` at the model's input ``shape``; returns images, their paths and the unreadable ones."""
    images, kept, skipped = [], [], []
    target = shape if shape[0] and shape[1] else None
    for path in paths:
        try:
            image = read_image(path, target, channels=shape[2])
        except Exception as exc:  # noqa: BLE001 - any decoding failure: skip and count
            log.warning("skipping unreadable image %s (%s)", path, exc)
            skipped.append(path)
            continue
        images.append(255 - image if invert else image)
        kept.append(path)
    return images, kept, skipped


def predict_files(model: keras.Model, class_names: list[str] | None, paths: list[str], *, top_k: int = 3,
                  invert: bool = False, batch_size: int = 64) -> tuple[list[Prediction], list[str]]:
    """Top-k predictions for image files of any size, mode and format; returns them and the skipped files."""
    shape = tuple(model.input_shape[1:])
    images, kept, skipped = prepare(paths, shape, invert)
    names = class_names or [str(i) for i in range(model.output_shape[-1])]
    if not images:
        return [], skipped
    if shape[0] and shape[1]:
        proba = model.predict(np.stack(images), batch_size=batch_size, verbose=0)
    else:
        proba = np.concatenate([model.predict(image[None], verbose=0) for image in images])
    proba = np.asarray(proba, dtype=np.float64)
    k = min(top_k, proba.shape[1])
    predictions = []
    for path, p in zip(kept, proba):
        top = np.argsort(-p, kind="stable")[:k]
        predictions.append(Prediction(path, [names[i] for i in top], [float(p[i]) for i in top]))
    return predictions, skipped


def predict(model_path: str, inputs: list[str], **kwargs) -> tuple[list[Prediction], list[str]]:
    """Load ``model_path`` (a ``.keras`` file or run folder) and predict on ``inputs`` (files or folders)."""
    model, metadata = load_model(model_path)
    return predict_files(model, metadata.get("class_names"), expand_inputs(inputs), **kwargs)
