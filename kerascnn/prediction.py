"""Predicting on one's own image files with a saved ``model.keras`` (or a run folder) or an
exported ONNX file."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kerascnn import distribute, models
from kerascnn.data.images import is_image_file, read_image
from kerascnn.errors import KerascnnError
from kerascnn.saving import class_names, float32_model, load_model

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


@dataclass
class Classifier:
    """A model to predict with: its input shape (h, w, c; h and w None for any size), class names
    and a function from a float32 batch of 0..255 pixels to class probabilities."""

    input_shape: tuple[int | None, int | None, int]
    class_names: list[str]
    proba: Callable[[np.ndarray], np.ndarray]


def load_classifier(path: str | Path, batch_size: int = 64) -> Classifier:
    """A ``.keras`` file, a run folder (its ``model.keras``) or an ONNX file exported by
    `kerascnn.export` (run with onnxruntime, its class names from the JSON beside it). A model
    trained in mixed precision predicts in float32 where this machine would train it in float32
    (`ModelSpec.auto_precision` at its working size): CPUs without AMX and XLA's CPU backend emulate
    bfloat16 slowly, and small backbones run faster in float32 even with AMX."""
    if Path(path).suffix.lower() == ".onnx":
        return _onnx_classifier(Path(path).expanduser(), batch_size)
    model, metadata = load_model(path)
    if _auto_precision(metadata, model.input_shape[1]) == "float32":  # trained in mixed precision elsewhere
        model = float32_model(model)
    names = class_names(metadata, model.output_shape[-1])
    return Classifier(tuple(model.input_shape[1:]), names,
                      lambda x: np.asarray(model.predict(x, batch_size=batch_size, verbose=0)))


def _auto_precision(metadata: dict[str, Any], input_size: int | None = None) -> str:
    """What this machine's ``--precision auto`` would train the saved model in, at its working size
    (``image_size`` in its metadata; files saved before kerascnn recorded it: its input size)."""
    name = metadata.get("model")
    if name in models.MODELS:
        return models.get(name).auto_precision(metadata.get("image_size") or input_size)
    return distribute.auto_precision()  # a model kerascnn does not know: no size rule


def _onnx_classifier(path: Path, batch_size: int) -> Classifier:
    from kerascnn.export import description_path

    if not path.is_file():
        raise KerascnnError(f"no ONNX model at {str(path)!r}")
    try:
        import onnxruntime
    except ImportError:
        raise KerascnnError("predicting with an ONNX file needs onnxruntime: pip install onnxruntime") from None
    described = description_path(path)
    if not described.is_file():
        raise KerascnnError(f"{path.name} has no {described.name} beside it (class names, input shape); "
                            "export it with python -m experiments.export")
    info = json.loads(described.read_text())
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for bad files
        raise KerascnnError(f"{path} is not a model onnxruntime can load ({str(exc).splitlines()[0]})") from None
    name = session.get_inputs()[0].name

    def proba(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return np.concatenate([session.run(None, {name: x[i:i + batch_size]})[0]
                               for i in range(0, len(x), batch_size)])

    return Classifier(tuple(info["input"]["shape"][1:]), info["class_names"], proba)


def predict_files(classifier: Classifier, paths: list[str], *, top_k: int = 3, invert: bool = False,
                  tta: str = "none") -> tuple[list[Prediction], list[str]]:
    """Top-k predictions for image files of any size, mode and format; returns them and the
    skipped files. ``tta`` ``flip`` averages each image's probabilities with its mirror's."""
    shape = classifier.input_shape
    images, kept, skipped = prepare(paths, shape, invert)
    if not images:
        return [], skipped

    def proba(batch: np.ndarray) -> np.ndarray:
        p = classifier.proba(batch.astype(np.float32))
        return (p + classifier.proba(batch[:, :, ::-1].astype(np.float32))) / 2 if tta == "flip" else p

    if shape[0] and shape[1]:
        probabilities = proba(np.stack(images))
    else:
        probabilities = np.concatenate([proba(image[None]) for image in images])
    probabilities = np.asarray(probabilities, dtype=np.float64)
    names = classifier.class_names
    k = min(top_k, probabilities.shape[1])
    predictions = []
    for path, p in zip(kept, probabilities):
        top = np.argsort(-p, kind="stable")[:k]
        predictions.append(Prediction(path, [names[i] for i in top], [float(p[i]) for i in top]))
    return predictions, skipped


def predict(model_path: str, inputs: list[str], batch_size: int = 64, **kwargs) -> tuple[list[Prediction], list[str]]:
    """Load ``model_path`` (`load_classifier`) and predict on ``inputs`` (files or folders);
    ``kwargs`` go to `predict_files`."""
    return predict_files(load_classifier(model_path, batch_size), expand_inputs(inputs), **kwargs)
