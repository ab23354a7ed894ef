"""The LR range test: the LR grows geometrically step by step, the suggestion follows its rule."""

import json

import numpy as np
import pytest

from experiments import lr_find as lr_find_cli
from experiments.cli import main


def lr_find(argv):
    return main(lr_find_cli.body, lr_find_cli.parser(), argv, known_only=True)


@pytest.mark.slow
def test_the_range_test_grows_the_lr_and_suggests_a_tenth_of_the_best(tmp_path, capsys):
    out = tmp_path / "lrf"
    assert lr_find(["digits", "cnn", "--steps", "30", "--start-lr", "1e-5", "--end-lr", "1.0", "--batch-size", "16",
                    "--split", "20,5,5", "--out", str(out)]) == 0
    result = json.loads((out / "lr_find.json").read_text())
    lrs, losses = np.array(result["learning_rates"]), np.array(result["losses"])
    assert 10 <= len(lrs) == len(losses) <= 30 and lrs[0] == np.float32(1e-5)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], (1.0 / 1e-5) ** (1 / 30), rtol=1e-4)  # what the optimizer used
    assert result["suggestion"] == lrs[np.nanargmin(losses)] / 10
    assert (out / "lr_find.png").stat().st_size > 5_000
    assert f"suggested lr: {result['suggestion']:.3g}" in capsys.readouterr().out
    assert lr_find(["digits", "cnn", "--steps", "3", "--out", str(tmp_path / "x")]) == 2
    assert "--steps must be >= 10" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_the_range_test_records_every_step_where_logs_are_read_back_every_few(monkeypatch):
    """On CUDA the fast steps read their logs back every 25 steps; the range test needs each one."""
    import keras

    if keras.backend.backend() != "torch":
        pytest.skip("the fast steps are the torch backend's")
    from kerascnn.config import RunConfig
    from kerascnn.lr_find import range_test
    from kerascnn.torch_fast import FastSteps

    config = RunConfig("digits", "cnn", batch_size=16, split="20,5,5", weights="none")
    every_step = range_test(config, steps=12, start=1e-4, end=1.0)
    monkeypatch.setitem(FastSteps.SYNC_EVERY, "cpu", 25)
    read_back_late = range_test(config, steps=12, start=1e-4, end=1.0)
    np.testing.assert_allclose(read_back_late.losses, every_step.losses, rtol=1e-4)
