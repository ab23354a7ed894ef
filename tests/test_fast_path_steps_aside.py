"""The fast torch path steps aside for Keras' own training step, with one warning, when it does not
understand the installed Keras: a version outside the checked range, a private name missing, or a
forward pass that differs from Keras' on a probe batch. The run still finishes and says so."""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import pytest

if keras.backend.backend() != "torch":
    pytest.skip("the fast path is the torch backend's", allow_module_level=True)

from run_configs import decided  # noqa: E402

import kerascnn  # noqa: E402
from kerascnn import keras_compat, models, torch_fast, training  # noqa: E402
from kerascnn.config import RunConfig  # noqa: E402
from kerascnn.torch_fast import program  # noqa: E402


def _unknown_version(monkeypatch):
    monkeypatch.setattr(keras_compat, "keras_version", lambda: (3, 99))
    return "outside the versions the fast path was checked on"


def _missing_attribute(monkeypatch):
    """A Keras that renamed a private name the fast path reads (Keras' own code reads the new one)."""
    read = keras_compat._read
    monkeypatch.setattr(keras_compat, "_read", lambda obj, name: read(obj, name + "_renamed" if name == "_momentums"
                                                                       else name))
    return "_momentums_renamed is missing"


def _missing_config_key(monkeypatch):
    """A Keras whose layers' configs name an option otherwise (Keras' own layer reads its attribute)."""
    get_config = keras.layers.Conv2D.get_config
    monkeypatch.setattr(keras.layers.Conv2D, "get_config",
                        lambda layer: {k: v for k, v in get_config(layer).items() if k != "strides"})
    return "KeyError: 'strides'"


def _different_forward(monkeypatch):
    """A Keras whose Normalization the program would misread (as no-op): the probe batch catches it."""
    monkeypatch.setitem(program.CONVERTERS, keras.layers.Normalization, lambda layer, node, cl: lambda training, v: v)
    return "forward pass differs from Keras'"


CASES = {"unknown version": _unknown_version, "missing attribute": _missing_attribute,
         "missing config key": _missing_config_key, "different forward": _different_forward}


def _compiled(config: RunConfig) -> tuple[keras.Model, dict]:
    keras.utils.set_random_seed(0)
    sample = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    model = models.build("cnn", (8, 8, 1), 3, dropout=0.0, head_dropout=0.0, sample=sample)
    return model, training.compile_model(model, config, steps_per_epoch=1)


def test_the_fast_path_installs_on_this_keras_and_says_so():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, verdict = _compiled(decided("t", "cnn", weights="none"))
    assert verdict == {"used": True, "reason": None, "keras": keras.version()} and training.uses_fast_path(model)


@pytest.mark.parametrize("case", CASES)
def test_a_keras_the_fast_path_does_not_understand_gets_keras_own_step_and_one_warning(case, monkeypatch):
    why = CASES[case](monkeypatch)
    with pytest.warns(UserWarning, match=f"Keras' own step.*Keras {keras.version()}.*{why}"):
        model, verdict = _compiled(decided("t", "cnn", weights="none"))
    assert not training.uses_fast_path(model) and not verdict["used"] and why in verdict["reason"]


def test_a_model_outside_what_the_fast_path_reproduces_steps_aside_quietly():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Activation("softmax")(keras.layers.Dense(3)(inputs)))
    model.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy", "auc"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verdict = torch_fast.install(model)
    assert not verdict.used and "metrics other than the loss and accuracy" in verdict.reason


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown version", "missing attribute"])
def test_a_run_on_such_a_keras_finishes_on_keras_own_step_and_records_why(case, monkeypatch, tmp_path):
    why = CASES[case](monkeypatch)
    with pytest.warns(UserWarning, match="Keras' own step"):
        out = kerascnn.run(RunConfig("digits", "cnn", epochs=1, out=str(tmp_path / "run"), verbose=0))
    recorded = json.loads((out / "metrics.json").read_text())["fast_path"]
    assert not recorded["used"] and why in recorded["reason"] and recorded["keras"] == keras.version()
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    assert f"Training step: Keras' own ({recorded['reason']})" in (out / "report.md").read_text()
