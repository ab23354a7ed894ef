"""Real data: a Fashion-MNIST subset and scikit-learn's digits, trained for a few epochs."""

import json
import os

import pytest

from experiments import run as run_cli
from experiments.cli import main
from kerascnn.data.sources import FASHION_MNIST_FILES, fashion_mnist_dirs

pytestmark = pytest.mark.integration


def fashion_mnist_available() -> bool:
    names = [f for pair in FASHION_MNIST_FILES.values() for f in pair]
    return any(all((d / n).is_file() for n in names) for d in fashion_mnist_dirs(None))


def test_real_fashion_mnist_subset(tmp_path):
    if not fashion_mnist_available():
        if os.environ.get("KERASCNN_REQUIRE_REAL_DATA"):
            pytest.fail("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "fm"
    argv = ["fashion_mnist", "cnn", "--split", "200,50,100", "--epochs", "4", "--batch-size", "64", "--out", str(out),
            "--verbose", "0"]
    assert main(run_cli.body, run_cli.parser(), argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["sizes"] == {"train": 2000, "val": 500, "test": 1000}
    assert metrics["dataset"]["per_class"]["test"] == [100] * 10
    assert metrics["accuracy"] > 0.70  # chance is 0.10
    assert metrics["class_names"][9] == "Ankle boot"


def test_real_digits(tmp_path):
    out = tmp_path / "digits"
    argv = ["digits", "cnn", "--epochs", "10", "--batch-size", "32", "--out", str(out), "--verbose", "0"]
    assert main(run_cli.body, run_cli.parser(), argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.85 and metrics["macro_f1"] > 0.85  # chance is 0.10
