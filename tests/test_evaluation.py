import numpy as np
import pytest

from kerascnn import evaluation


def one_hot_proba(pred, n, confidence):
    proba = np.full((len(pred), n), (1 - np.asarray(confidence))[:, None] / (n - 1))
    proba[np.arange(len(pred)), pred] = confidence
    return proba


def test_metrics_of_a_known_prediction():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 1, 2, 0])
    m = evaluation.classification_metrics(y, one_hot_proba(pred, 3, np.full(8, 0.8)), ["a", "b", "c"], top_k=2)
    assert m["accuracy"] == pytest.approx(6 / 8)
    # per class: a P=3/4 R=3/4, b P=2/3 R=1, c P=1 R=1/2
    assert m["per_class"]["a"] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4})
    assert m["per_class"]["c"]["recall"] == pytest.approx(0.5)
    assert m["macro_recall"] == pytest.approx((0.75 + 1 + 0.5) / 3)
    assert m["weighted_recall"] == pytest.approx(6 / 8)
    assert m["macro_precision"] == pytest.approx((0.75 + 2 / 3 + 1) / 3)
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["confusion_matrix_normalized"][2] == [0.5, 0.0, 0.5]
    assert m["top_k_accuracy"]["2"] >= m["accuracy"]
    lo, hi = m["accuracy_ci95"]
    assert lo < 0.75 < hi


def test_a_class_never_predicted_scores_zero_precision():
    y = np.array([0, 1, 2])
    m = evaluation.classification_metrics(y, one_hot_proba(np.array([0, 1, 1]), 3, np.full(3, 0.9)), ["a", "b", "c"])
    assert m["per_class"]["c"]["precision"] == 0.0 and m["per_class"]["c"]["support"] == 1


def test_wilson_interval():
    lo, hi = evaluation.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert evaluation.wilson_interval(0, 0) == (0.0, 0.0)


def test_most_confident_mistakes_come_first():
    y = np.array([0, 0, 1, 1])
    proba = one_hot_proba(np.array([1, 0, 0, 0]), 2, np.array([0.6, 0.9, 0.95, 0.7]))
    assert evaluation.most_confident_mistakes(y, proba).tolist() == [2, 3, 0]
    assert evaluation.most_confident_mistakes(y, proba, limit=1).tolist() == [2]
