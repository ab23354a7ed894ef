"""Calibration: whether predicted probabilities mean what they say, and temperature scaling.

Scores follow Guo et al. (ICML 2017): the top-label expected calibration error (ECE) over 15
equal-width confidence bins, its maximum (MCE), the negative log-likelihood and the Brier score.
Temperature scaling divides the logits by one temperature fitted on the validation split; it keeps
every prediction's argmax, so accuracy does not change. See ``docs/design/calibration.md``.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

BINS = 15
TEMPERATURE_LAYER = "temperature"


def bin_index(confidence: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Each confidence's bin: ``[k/bins, (k+1)/bins)``, and a bin of its own (index ``bins``) for a
    confidence of exactly 1 (torchmetrics' rule, so that the scores match its)."""
    return np.searchsorted(np.linspace(0, 1, bins + 1), confidence, side="right") - 1


def reliability(y_true: np.ndarray, proba: np.ndarray, bins: int = BINS) -> dict[str, np.ndarray]:
    """Per bin (``bins + 1`` of them, `bin_index`): the number of images, their mean confidence and
    their accuracy (0 where a bin is empty)."""
    confidence, correct = proba.max(axis=1), proba.argmax(axis=1) == np.asarray(y_true)
    index = bin_index(confidence, bins)
    count = np.bincount(index, minlength=bins + 1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.nan_to_num(np.bincount(index, confidence, bins + 1) / count)
        accuracy = np.nan_to_num(np.bincount(index, correct, bins + 1) / count)
    return {"count": count, "confidence": mean_confidence, "accuracy": accuracy}


def ece_interval(y_true: np.ndarray, proba: np.ndarray, bins: int = BINS, resamples: int = 1000,
                 seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of the ECE over the test images (seeded)."""
    y_true = np.asarray(y_true)
    n = len(y_true)
    if n == 0:
        return [0.0, 0.0]
    confidence, correct = proba.max(axis=1), (proba.argmax(axis=1) == y_true).astype(np.float64)
    index, slots = bin_index(confidence, bins), bins + 1
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, resamples, 100):  # 100 resamples at a time keep memory small
        draws = min(100, resamples - start)
        picks = rng.integers(0, n, (draws, n))
        codes = (np.arange(draws)[:, None] * slots + index[picks]).ravel()
        gap = (np.bincount(codes, correct[picks].ravel(), draws * slots)
               - np.bincount(codes, confidence[picks].ravel(), draws * slots)).reshape(draws, slots)
        values.append(np.abs(gap).sum(axis=1) / n)  # sum over bins of |count * (acc - conf)| / n
    return np.percentile(np.concatenate(values), [2.5, 97.5]).tolist()


def calibration_metrics(y_true: np.ndarray, proba: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """ECE with its bootstrap interval, MCE, negative log-likelihood and multiclass Brier score of
    probabilities ``proba`` (n, classes) against integer labels ``y_true``."""
    y_true, proba = np.asarray(y_true), np.asarray(proba, np.float64)
    table = reliability(y_true, proba, bins)
    gaps = np.abs(table["accuracy"] - table["confidence"])
    onehot = np.eye(proba.shape[1])[y_true]
    return {
        "bins": bins,
        "ece": float(np.sum(table["count"] * gaps) / max(1.0, table["count"].sum())),
        "ece_ci95": ece_interval(y_true, proba, bins),
        "mce": float(gaps[table["count"] > 0].max()) if len(y_true) else 0.0,
        "nll": float(-np.log(np.clip(proba[np.arange(len(y_true)), y_true], 1e-15, 1)).mean()) if len(y_true) else 0.0,
        "brier": float(np.mean(np.sum((proba - onehot) ** 2, axis=1))) if len(y_true) else 0.0,
    }


def logits_model(model: keras.Model) -> keras.Model:
    """The model up to its logits: a kerascnn model's ``probabilities`` softmax takes them as input
    (through the ``temperature`` layer, if calibrated, which this leaves out)."""
    from kerascnn.errors import KerascnnError

    try:
        tensor = model.get_layer(TEMPERATURE_LAYER if _has_temperature(model) else "probabilities").input
    except ValueError:
        raise KerascnnError(f"{model.name} has no 'probabilities' softmax layer: not a kerascnn model") from None
    return keras.Model(model.input, tensor, name=f"{model.name}_logits")


def _has_temperature(model: keras.Model) -> bool:
    return any(layer.name == TEMPERATURE_LAYER for layer in model.layers)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of ``softmax(logits / T)``
    on ``y_true`` (SciPy's bounded scalar search over log T)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    logits, y_true = np.asarray(logits, np.float64), np.asarray(y_true)

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(y_true)), y_true].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))


def with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """``model`` with its logits divided by ``temperature`` before the softmax: a built-in
    ``Rescaling`` layer named ``temperature``, so plain Keras, ONNX and `predict` load and use it."""
    logits = logits_model(model).outputs[0]
    scaled = keras.layers.Rescaling(1.0 / temperature, dtype="float32", name=TEMPERATURE_LAYER)(logits)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(scaled)
    calibrated = keras.Model(model.input, outputs, name=model.name)
    for attribute in ("weights_source",):  # plain attributes the runner reads (not saved)
        if hasattr(model, attribute):
            object.__setattr__(calibrated, attribute, getattr(model, attribute))
    return calibrated


def temperature_of(model: keras.Model) -> float | None:
    """The temperature a calibrated model divides its logits by (None: not calibrated)."""
    if not _has_temperature(model):
        return None
    return 1.0 / float(model.get_layer(TEMPERATURE_LAYER).get_config()["scale"])


def uncalibrated(proba: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities a model gave before its ``temperature`` was applied (softmax is
    shift-invariant: ``softmax(T * log p)`` undoes ``p = softmax(z / T)``)."""
    return softmax(temperature * np.log(np.maximum(proba, np.finfo(np.float64).tiny)))
