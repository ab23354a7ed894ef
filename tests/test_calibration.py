"""Calibration: ECE and MCE against torchmetrics, temperature scaling (fitted, stored in the model
as a built-in layer, undone exactly), and --calibrate in a run."""

import importlib.util
import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from experiments import run as run_cli
from experiments.cli import main
from kerascnn import calibration, models


def reference_ece(proba, labels, norm):
    torch = pytest.importorskip("torch")
    classification = pytest.importorskip("torchmetrics.classification", reason="torchmetrics: tox -e torch")
    metric = classification.MulticlassCalibrationError(num_classes=proba.shape[1], n_bins=15, norm=norm)
    return float(metric(torch.tensor(proba), torch.tensor(labels)))


def real_predictions():
    """A logistic regression's probabilities on scikit-learn's real digits (held-out half)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    model = LogisticRegression(max_iter=200).fit(x[::2], y[::2])
    return model.predict_proba(x[1::2]), y[1::2]


def random_predictions():
    rng = np.random.default_rng(0)
    proba = calibration.softmax(3 * rng.normal(size=(2000, 7)))
    proba[:20] = np.eye(7)[rng.integers(0, 7, 20)]  # confidences of exactly 1: a bin of their own
    return proba, rng.integers(0, 7, 2000)


@pytest.mark.parametrize("predictions", [random_predictions, real_predictions])
def test_ece_and_mce_equal_torchmetrics(predictions):
    proba, labels = predictions()
    scores = calibration.calibration_metrics(labels, proba)
    assert scores["ece"] == pytest.approx(reference_ece(proba, labels, "l1"), abs=1e-5)  # it works in float32
    assert scores["mce"] == pytest.approx(reference_ece(proba, labels, "max"), abs=1e-5)
    low, high = scores["ece_ci95"]
    assert low <= scores["ece"] <= high and scores["ece_ci95"] == calibration.calibration_metrics(
        labels, proba)["ece_ci95"]  # seeded


def test_nll_and_brier():
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    scores = calibration.calibration_metrics(np.array([0, 1]), proba)
    assert scores["nll"] == pytest.approx(-(np.log(0.7) + np.log(0.1)) / 2)
    assert scores["brier"] == pytest.approx(((0.09 + 0.04 + 0.01) + (0.01 + 0.81 + 0.64)) / 2)


def test_temperature_is_recovered_and_keeps_every_argmax():
    rng = np.random.default_rng(1)
    logits = 2 * rng.normal(size=(4000, 10))
    labels = np.array([rng.choice(10, p=p) for p in calibration.softmax(logits)])
    over_confident = 2.5 * logits
    temperature = calibration.fit_temperature(over_confident, labels)
    assert temperature == pytest.approx(2.5, rel=0.08)
    before, after = calibration.softmax(over_confident), calibration.softmax(over_confident / temperature)
    assert np.array_equal(before.argmax(axis=1), after.argmax(axis=1))
    ece = [calibration.calibration_metrics(labels, p)["ece"] for p in (before, after)]
    assert ece[1] < ece[0]
    np.testing.assert_allclose(calibration.uncalibrated(after, temperature), before, atol=1e-9)


PLAIN_KERAS = """
import sys, numpy as np, keras
model = keras.saving.load_model(sys.argv[1])
assert not any(name.startswith("kerascnn") for name in sys.modules), "kerascnn was imported"
np.save(sys.argv[2], model.predict(np.load(sys.argv[3]), verbose=0))
"""


@pytest.mark.slow  # a second Python process
def test_a_calibrated_model_file_gives_calibrated_probabilities_in_plain_keras(tmp_path):
    keras.utils.set_random_seed(0)
    model = models.build("cnn", (8, 8, 1), 4)
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1)).astype("float32")
    logits = keras.ops.convert_to_numpy(calibration.logits_model(model)(images, training=False))
    calibrated = calibration.with_temperature(model, 2.0)
    assert calibration.temperature_of(calibrated) == pytest.approx(2.0) and calibration.temperature_of(model) is None
    before_t = keras.ops.convert_to_numpy(calibration.logits_model(calibrated)(images, training=False))
    np.testing.assert_allclose(before_t, logits, atol=1e-5)
    calibrated.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", images)
    done = subprocess.run([sys.executable, "-c", PLAIN_KERAS, str(tmp_path / "m.keras"), str(tmp_path / "p.npy"),
                           str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), calibration.softmax(logits / 2.0), atol=1e-5)


def test_calibrate_without_a_validation_split_is_one_line_before_anything_is_created(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["digits", "cnn", "--split", "20,0,10", "--calibrate", "temperature", "--epochs", "1", "--out", str(out)]
    assert main(run_cli.body, run_cli.parser(), argv) == 2
    err = capsys.readouterr().err
    assert "--calibrate temperature fits on the validation split, and --split 20,0,10 has none" in err
    assert err.count("\n") == 1 and not out.exists()


@pytest.mark.slow
def test_a_calibrated_run_reports_before_and_after_and_its_model_predicts_calibrated(tmp_path):
    import kerascnn
    from kerascnn.prediction import load_classifier

    run = kerascnn.run(kerascnn.RunConfig("digits", "cnn", epochs=3, split="20,20,30", calibrate="temperature",
                                          verbose=0, out=str(tmp_path / "run")))
    metrics = json.loads((run / "metrics.json").read_text())
    before, after = metrics["before_calibration"], metrics["calibration"]
    assert metrics["temperature"] > 0 and before["accuracy"] == metrics["accuracy"]
    assert after["nll"] != before["nll"] and {"ece", "ece_ci95", "mce", "nll", "brier"} <= after.keys()
    report = (run / "report.md").read_text()
    assert "## Calibration" in report and f"T = {metrics['temperature']:.3f}" in report
    for figure in ("calibration.png", "mistakes_cam.png"):
        assert (run / figure).stat().st_size > 5_000
    model, _ = kerascnn.load_model(run)
    assert calibration.temperature_of(model) == pytest.approx(metrics["temperature"])
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1)).astype("float32")
    logits = keras.ops.convert_to_numpy(calibration.logits_model(model)(images, training=False))
    calibrated = calibration.softmax(logits / metrics["temperature"])
    np.testing.assert_allclose(load_classifier(run).proba(images), calibrated, atol=1e-5)
    if keras.backend.backend() == "torch" and all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript")):
        from kerascnn.export import export

        onnx = load_classifier(export(run, "onnx"))
        np.testing.assert_allclose(onnx.proba(images), calibrated, atol=1e-4)
