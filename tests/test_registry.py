"""The model registry: one record per model drives building, stages, freezing, the CLI and the docs' model table."""

from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from experiments import run as run_cli
from experiments.cli import main
from kerascnn import models
from kerascnn.errors import KerascnnError
from kerascnn.models.registry import MODELS, CNNSpec, ModelSpec, register
from kerascnn.saving import load_model, save_model

MODELS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "models.md"


def toy_backbone(input_shape, imagenet):
    """Two stages, ``stem`` and ``body``, of plain Keras layers."""
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(8, 3, padding="same", name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.Conv2D(16, 3, strides=2, padding="same", name="body_conv")(x)
    return keras.Model(inputs, x, name="backbone")


def toy_stage(layer_name):
    return layer_name.split("_")[0] if layer_name.startswith(("stem_", "body_")) else None


@pytest.fixture
def toy():
    spec = register(ModelSpec("toy", "a two-stage toy backbone", backbone=toy_backbone, stages=("stem", "body"),
                              stage_of=toy_stage, image_size=32))
    yield spec
    del MODELS["toy"]


def test_a_backbone_registered_alone_is_listed_built_frozen_by_stage_and_saved(toy, tmp_path, capsys):
    assert "toy" in run_cli.parser().format_help()
    assert main(run_cli.body, run_cli.parser(), ["--list-stages", "toy"]) == 0
    listed = capsys.readouterr().out
    assert "stem" in listed and "body" in listed and "head" in listed

    model = models.build("toy", (20, 20, 1), 3)
    assert model.get_layer("resize").output.shape[1:3] == (32, 32)  # the record's image size
    frozen = models.set_trainable(model, "body")
    assert frozen["frozen_stages"] == ["stem"] and frozen["unfrozen_stages"] == ["body", "head"]
    params = models.stage_params(model)
    assert models.trainable_params(model) == params["body"] + params["head"]

    images = np.random.default_rng(0).integers(0, 256, (4, 20, 20, 1), dtype=np.uint8)
    save_model(model, tmp_path / "model.keras", {"model": "toy"})
    loaded, meta = load_model(tmp_path / "model.keras")
    assert meta["model"] == "toy"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images.astype("float32"))),
                               keras.ops.convert_to_numpy(model(images.astype("float32"))), atol=1e-6)


@pytest.mark.slow
def test_a_registered_backbone_trains_from_the_command_line(toy, tmp_path):
    out = tmp_path / "run"
    argv = ["digits", "toy", "--epochs", "1", "--unfreeze", "body", "--out", str(out), "--verbose", "0"]
    assert main(run_cli.body, run_cli.parser(), argv) == 0
    assert (out / "metrics.json").is_file()


def test_records_are_checked_when_registered():
    with pytest.raises(ValueError, match="exactly one"):
        ModelSpec("bad", "neither", stages=("a",))
    with pytest.raises(ValueError, match="stages"):
        ModelSpec("bad", "no stages", backbone=toy_backbone)
    with pytest.raises(KerascnnError, match="already registered"):
        register(ModelSpec("cnn", "again", cnn=CNNSpec()))


def test_the_docs_model_table_is_the_registry():
    assert models.markdown_table() in MODELS_PAGE.read_text(), "docs/models.md's table: paste models.markdown_table()"
