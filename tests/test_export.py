"""Export: files that predict on the test images as the Keras model does, outside kerascnn;
predicting with an ONNX file; one-line refusals where a backend cannot write a format."""

import csv
import json
import zipfile

import keras
import numpy as np
import pytest

import kerascnn
from experiments import export as export_cli
from experiments import predict as predict_cli
from experiments.cli import main
from kerascnn import export, runner, saving
from kerascnn.config import RunConfig
from kerascnn.errors import KerascnnError

BACKEND = keras.backend.backend()


def trained(root, dataset, model, **options):
    """A run of ``model`` (once per module). The parity tests train in float32: a mixed-precision
    model (``--precision auto`` on a GPU or an AMX CPU) is exported as its float32 copy, which
    `test_mixed_precision_models_export_as_float32` checks."""
    out = root / model
    if not out.exists():
        kerascnn.run(RunConfig(dataset, model, out=str(out), verbose=0, **options))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("export-runs")


def held_out_images(run_dir):
    config = RunConfig.load(run_dir / "config.json")
    dataset = runner.load_dataset(config)
    return dataset.test.pixels(np.arange(len(dataset.test)), dataset.image_shape).astype("float32")


def exported_proba(path, fmt, images):
    if fmt == "onnx":
        onnxruntime = pytest.importorskip("onnxruntime", reason="the parity check runs the file with onnxruntime")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images})[0]
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # kept: .serve needs the object alive
        return loaded.serve(images).numpy()
    return keras.saving.load_model(path, compile=False).predict(images, verbose=0)


def export_or_skip(run_dir, fmt, out=None):
    try:
        export.check_format(fmt)
    except KerascnnError as exc:
        pytest.skip(f"{fmt} on {BACKEND}: {exc}")
    return export.export(run_dir, fmt, out)


def check_parity(run_dir, fmt):
    path = export_or_skip(run_dir, fmt)
    images = held_out_images(run_dir)
    model, _ = kerascnn.load_model(run_dir)
    expected = np.asarray(model.predict(images, verbose=0))
    got = np.asarray(exported_proba(path, fmt, images))
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()
    described = json.loads(export.description_path(path).read_text())
    assert described["class_names"] == json.loads((run_dir / "metrics.json").read_text())["class_names"]
    assert described["input"]["shape"] == [None, *images.shape[1:]] and described["input"]["range"] == [0, 255]
    assert described["source"]["model_file"].endswith("model.keras") and described["preprocessing"]
    return path


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=pytest.mark.slow), "savedmodel", "keras"])  # slow: 12 s
def test_scratch_cnn_exports_with_parity(runs, fmt):
    run_dir = trained(runs, "digits", "cnn", epochs=2, precision="float32")
    path = check_parity(run_dir, fmt)
    assert path.parent == run_dir / "export"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "savedmodel"])
def test_resnet18_exports_with_parity(runs, colour_folder, fmt):
    run_dir = trained(runs, f"folder:{colour_folder}", "resnet18", epochs=1, image_size=32, batch_size=8,
                      weights="none", precision="float32")
    check_parity(run_dir, fmt)


@pytest.mark.slow  # an ONNX export: 5 s
def test_mixed_precision_models_export_as_float32(runs, tmp_path):
    from kerascnn import models
    from kerascnn.saving import save_model

    with models.dtype_policy("mixed_bfloat16"):
        model = models.build("cnn", (8, 8, 1), 10, sample=np.arange(64, dtype=np.uint8).reshape(1, 8, 8, 1))
    assert model.layers[-2].dtype_policy.name == "mixed_bfloat16"
    save_model(model, tmp_path / "model.keras", {"class_names": list("abcdefghij")})
    copy = saving.float32_model(kerascnn.load_model(tmp_path / "model.keras")[0])
    assert {layer.dtype_policy.name for layer in saving.all_layers(copy)} == {"float32"}
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0), atol=0.02)
    for fmt in ("keras", {"torch": "onnx", "tensorflow": "savedmodel"}.get(BACKEND)):
        if fmt:
            path = export_or_skip(tmp_path / "model.keras", fmt)
            np.testing.assert_allclose(exported_proba(path, fmt, x), copy.predict(x, verbose=0), atol=1e-4)


def test_mixed_precision_models_predict_in_float32_where_this_machine_trains_in_float32(tmp_path, monkeypatch):
    from kerascnn import models, prediction

    with models.dtype_policy("mixed_bfloat16"):
        model = models.build("cnn", (8, 8, 1), 10, sample=np.arange(64, dtype=np.uint8).reshape(1, 8, 8, 1))
    saving.save_model(model, tmp_path / "model.keras", {"class_names": list("abcdefghij")})
    x = np.random.default_rng(1).uniform(0, 255, (16, 8, 8, 1)).astype("float32")
    in_float32 = saving.float32_model(model).predict(x, verbose=0)
    in_bfloat16 = model.predict(x, verbose=0)
    assert np.abs(in_float32 - in_bfloat16).max() > 1e-4  # the two precisions are told apart below
    for here, expected in (("float32", in_float32), ("mixed_bfloat16", in_bfloat16)):
        monkeypatch.setattr(prediction.distribute, "auto_precision", lambda here=here: here)
        classifier = prediction.load_classifier(tmp_path / "model.keras")
        np.testing.assert_allclose(classifier.proba(x), expected, atol=1e-6)


def run_cli(module, argv):
    return main(module.body, module.parser(), argv)


@pytest.mark.slow  # an ONNX export: 5 s
def test_predict_reads_an_onnx_file_like_the_keras_model(runs, tmp_path, capsys):
    run_dir = trained(runs, "digits", "cnn", epochs=2, precision="float32")
    onnx_file = export_or_skip(run_dir, "onnx", tmp_path / "digits.onnx")
    images = tmp_path / "mine"
    images.mkdir()
    from PIL import Image

    for i, pixels in enumerate(held_out_images(run_dir)[:6]):
        Image.fromarray(pixels[..., 0].astype(np.uint8)).save(images / f"{i}.png")
    rows = {}
    for source in (run_dir, onnx_file):
        for tta in ("none", "flip"):
            out = tmp_path / f"{source.name}-{tta}.csv"
            assert run_cli(predict_cli, [str(source), str(images), "--csv", str(out), "--tta", tta]) == 0
            rows[source.suffix, tta] = list(csv.reader(out.open()))
    capsys.readouterr()
    assert rows["", "none"] == rows[".onnx", "none"] and rows["", "flip"] == rows[".onnx", "flip"]
    assert len(rows["", "none"]) == 7


def test_unsupported_formats_and_taken_paths_are_refused_before_writing(runs, tmp_path, capsys):
    run_dir = trained(runs, "digits", "cnn", epochs=2, precision="float32")
    before = sorted(p.name for p in run_dir.iterdir())
    fmt = "savedmodel" if BACKEND != "tensorflow" else "onnx"
    assert run_cli(export_cli, [str(run_dir), "--format", fmt, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs the" in err and "--backend" in err
    assert not (tmp_path / "x").exists()
    taken = tmp_path / "taken.keras"
    taken.write_text("mine")
    assert run_cli(export_cli, [str(run_dir), "--format", "keras", "--out", str(taken)]) == 2
    assert "already exists" in capsys.readouterr().err and taken.read_text() == "mine"
    assert run_cli(export_cli, [str(tmp_path / "nothing"), "--format", "keras"]) == 2
    assert "no model at" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing written into the run folder


def test_keras_export_keeps_the_metadata_and_describes_the_input(runs, tmp_path):
    run_dir = trained(runs, "digits", "cnn", epochs=2, precision="float32")
    path = export.export(run_dir, "keras", tmp_path / "plain.keras")
    with zipfile.ZipFile(path) as archive:
        assert {"model.weights.h5", "kerascnn.json"} <= set(archive.namelist())
    assert kerascnn.load_model(path)[1] == kerascnn.load_model(run_dir)[1]
    assert json.loads(export.description_path(path).read_text())["input"]["name"] == "image"


@pytest.mark.slow  # an ONNX export: 5 s
def test_the_docs_onnxruntime_example_runs_against_an_exported_file(tmp_path, monkeypatch, capsys):
    import re
    from pathlib import Path

    from PIL import Image

    from kerascnn import models
    from kerascnn.saving import save_model

    page = (Path(__file__).parents[1] / "docs" / "export.md").read_text()
    section = page[page.index("## Using a trained model elsewhere"):]
    class_names_snippet, snippet = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    model = models.build("cnn", (28, 28, 1), 10, sample=(np.arange(784) % 256).astype(np.uint8).reshape(1, 28, 28, 1))
    save_model(model, tmp_path / "model.keras", {"class_names": names})
    export_or_skip(tmp_path / "model.keras", "onnx", tmp_path / "model.onnx")
    shirt = np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)
    Image.fromarray(shirt).save(tmp_path / "shirt.png")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    read = {}
    exec(class_names_snippet.replace("RUN_DIR/", ""), read)  # the standard library reads the class names
    assert read["class_names"] == names
    exec(snippet, {})
    expected = model.predict(np.asarray(Image.fromarray(shirt).resize((28, 28)), np.float32)[None, :, :, None],
                             verbose=0).argmax()
    assert capsys.readouterr().out.strip() == names[expected]
