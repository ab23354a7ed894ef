"""A run through the fast torch path: fit, evaluate, predict and save; ``--no-jit``; memory kept."""

from __future__ import annotations

import keras
import numpy as np
import pytest

if keras.backend.backend() != "torch":
    pytest.skip("the fast path is the torch backend's", allow_module_level=True)


from run_configs import decided  # noqa: E402
from torch_fast_support import GREY_SAMPLE, build, images, twin  # noqa: E402

from kerascnn import training  # noqa: E402
from kerascnn.saving import load_model, save_model  # noqa: E402


@pytest.mark.slow
def test_fit_evaluate_predict_and_save_through_the_fast_path(tmp_path):
    model = build("resnet18", 32, 3, image_size=32)
    x, y = images(16, 32, 3), np.eye(4, dtype="float32")[np.arange(16) % 4]
    training.compile_model(model, decided("bench", "resnet18", weights="none", epochs=2), steps_per_epoch=2)
    assert training.uses_fast_path(model)
    history = model.fit(x, y, batch_size=8, epochs=2, validation_data=(x, y), verbose=0)
    assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    reference = twin(model)
    reference.compile(loss=keras.losses.CategoricalCrossentropy(), metrics=[keras.metrics.CategoricalAccuracy(
        name="accuracy")])
    got, expected = model.evaluate(x, y, verbose=0, return_dict=True), reference.evaluate(x, y, verbose=0,
                                                                                           return_dict=True)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert got["accuracy"] == pytest.approx(expected["accuracy"])
    proba = model.predict(x, verbose=0)
    np.testing.assert_allclose(proba, reference.predict(x, verbose=0), atol=1e-5)
    save_model(model, tmp_path / "model.keras", {"class_names": list("abcd")})
    loaded, _ = load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), proba, atol=1e-5)


def test_no_jit_keeps_keras_own_steps():
    model = build("cnn", 16, 1, sample=GREY_SAMPLE)
    training.compile_model(model, decided("bench", "cnn", jit=False), steps_per_epoch=1)
    assert not training.uses_fast_path(model)


def test_cpu_training_keeps_freed_memory_on_linux():
    import sys

    from kerascnn.distribute import keep_freed_memory

    assert keep_freed_memory() is sys.platform.startswith("linux")
