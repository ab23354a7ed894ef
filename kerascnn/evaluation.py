"""Predictions -> metrics with scikit-learn: accuracy with its confidence interval, macro and
weighted precision/recall/F1 (F1 with bootstrap intervals), per-class scores, confusion matrices and top-k accuracy."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from kerascnn.stats import wilson_interval


def predict_proba(model: keras.Model, batches: keras.utils.PyDataset) -> np.ndarray:
    """Class probabilities (n, classes) for every image of an unshuffled pipeline."""
    return np.asarray(model.predict(batches, verbose=0), dtype=np.float64)


def bootstrap_f1_intervals(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, resamples: int = 2000,
                           seed: int = 0) -> dict[str, list[float]]:
    """95% percentile-bootstrap intervals of macro and weighted F1 over the test images
    (``resamples`` draws of n images with replacement, seeded: the same predictions give the same interval)."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    n, k = len(y_true), num_classes
    if n == 0:
        return {"macro_f1_ci95": [0.0, 0.0], "weighted_f1_ci95": [0.0, 0.0]}
    codes = y_true * k + y_pred
    rng = np.random.default_rng(seed)
    macro, weighted = [], []
    for start in range(0, resamples, 200):  # 200 confusion matrices at a time keep memory small
        draws = min(200, resamples - start)
        rows = np.repeat(np.arange(draws) * k * k, n)
        cm = np.bincount(rows + codes[rng.integers(0, n, (draws, n))].ravel(), minlength=draws * k * k)
        cm = cm.reshape(draws, k, k).astype(np.float64)
        tp, support, predicted = np.diagonal(cm, axis1=1, axis2=2), cm.sum(axis=2), cm.sum(axis=1)
        f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=(support + predicted) > 0)
        macro.append(f1.mean(axis=1))
        weighted.append((f1 * support).sum(axis=1) / n)
    return {name: np.percentile(np.concatenate(values), [2.5, 97.5]).tolist()
            for name, values in (("macro_f1_ci95", macro), ("weighted_f1_ci95", weighted))}


DEFAULT_TOP_K = 5


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, class_names: list[str],
                           top_k: int | None = None) -> dict[str, Any]:
    """Metrics of predicted probabilities ``proba`` (n, classes) against integer labels ``y_true``.
    Top-k accuracy for k = 2, 3 and ``top_k`` (default `DEFAULT_TOP_K`) below the class count.

    Scores are fractions in [0, 1]; precision of a class never predicted counts as 0.
    """
    y_true = np.asarray(y_true)
    labels = np.arange(len(class_names))
    y_pred = proba.argmax(axis=1)
    correct = int((y_pred == y_true).sum())
    metrics: dict[str, Any] = {
        "n_test": len(y_true),
        "accuracy": correct / max(1, len(y_true)),
        "accuracy_ci95": list(wilson_interval(correct, len(y_true))),
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average, zero_division=0)
        metrics.update({f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)})
    metrics.update(bootstrap_f1_intervals(y_true, y_pred, len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    metrics["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(class_names)
    }
    metrics["top_k_accuracy"] = {
        str(k): float(top_k_accuracy_score(y_true, proba, k=k, labels=labels))
        for k in sorted({2, 3, top_k or DEFAULT_TOP_K}) if k < len(class_names)
    }
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    metrics["confusion_matrix"] = cm.tolist()
    rows = cm.sum(axis=1, keepdims=True)
    metrics["confusion_matrix_normalized"] = np.round(cm / np.maximum(rows, 1), 4).tolist()
    metrics["class_names"] = list(class_names)
    return metrics


def most_confident_mistakes(y_true: np.ndarray, proba: np.ndarray, limit: int = 25) -> np.ndarray:
    """Indices of wrong predictions, the most confident first (at most ``limit``)."""
    y_pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != np.asarray(y_true))
    order = np.argsort(-proba[wrong, y_pred[wrong]], kind="stable")
    return wrong[order][:limit]
