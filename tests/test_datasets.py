"""The source studies' datasets, each on a replica of its real layout, end to end."""

import json
import sys
import types

import numpy as np
import pytest
import replicas

from experiments import run as run_cli
from experiments import study as study_cli
from experiments.cli import main
from kerascnn import data
from kerascnn.errors import KerascnnError

ENGLISH = ["butterfly", "cat", "chicken", "cow", "dog", "elephant", "horse", "sheep", "spider", "squirrel"]


def run(argv):
    return main(run_cli.body, run_cli.parser(), argv)


def assert_disjoint(ds):
    train, val, test = (set(map(str, s.paths)) for s in (ds.train, ds.val, ds.test))
    assert not test & train and not test & val and not train & val


@pytest.fixture
def kerascnn_data(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASCNN_DATA", str(tmp_path / "datasets"))
    return tmp_path / "datasets"


def test_animals10_english_names_balanced_split_and_skipped_file(kerascnn_data):
    replicas.animals10(kerascnn_data / "animals10")
    ds = data.load("animals10", image_size=32)
    assert ds.class_names == ENGLISH  # ragno -> spider included
    assert len(ds.skipped_files) == 1 and ds.image_shape == (32, 32, 3)
    # 6 images a class (8 readable for dog) are short of 300/75/75: split 4:1:1 per class
    assert ds.train.counts(10) == [4, 4, 4, 4, 6, 4, 4, 4, 4, 4]
    assert ds.val.counts(10) == [1] * 10 and ds.test.counts(10) == [1] * 10
    assert_disjoint(ds)
    assert any("300,75,75" in note for note in ds.notes)


@pytest.mark.slow
def test_animals10_takes_300_75_75_per_class_when_it_has_enough(tmp_path):
    replicas.animals10(tmp_path / "big", per_class=460, size=4)
    ds = data.load("animals10", data_dir=str(tmp_path / "big"), image_size=8)
    assert ds.train.counts(10) == [300] * 10 and ds.val.counts(10) == [75] * 10 and ds.test.counts(10) == [75] * 10
    assert len(ds.train) + len(ds.val) + len(ds.test) == 4_500
    assert_disjoint(ds)
    fractions = data.load("animals10", data_dir=str(tmp_path / "big"), split="0.8,0.1,0.1", image_size=8)
    assert len(fractions.train) == 3_682 and len(fractions.test) == 460  # 46 a class; dog has 462 images


@pytest.mark.slow
def test_the_design_card_command_on_the_animals10_replica(kerascnn_data, tmp_path, monkeypatch):
    """python -m experiments.run animals10 resnet18 --unfreeze layer3,layer4, with ImageNet weights
    from the Keras cache (here random ones, since nothing can be downloaded)."""
    from kerascnn.models.backbones import keras_models_dir
    from kerascnn.models.resnet import resnet_backbone

    replicas.animals10(kerascnn_data / "animals10")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    keras_models_dir().mkdir(parents=True)
    resnet_backbone("resnet18").save_weights(keras_models_dir() / "resnet18-f37072fd.weights.h5")
    out = tmp_path / "run"
    assert run(["animals10", "resnet18", "--unfreeze", "layer3,layer4", "--epochs", "1", "--image-size", "64",
                "--batch-size", "16", "--out", str(out), "--verbose", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_names"] == ENGLISH and metrics["skipped_files"] == 1
    assert metrics["unfrozen_stages"] == ["layer3", "layer4", "head"] and metrics["trainable_params"] == 10_498_570
    assert metrics["weights"]["source"] == "imagenet"
    assert metrics["dataset"]["sizes"] == {"train": 42, "val": 10, "test": 10}


def test_deep_weeds_official_folds(kerascnn_data):
    root = replicas.deep_weeds(kerascnn_data / "deep_weeds")
    ds = data.load("deep_weeds", image_size=32)
    assert ds.class_names[0] == "Chinee apple" and ds.class_names[8] == "Negative"
    assert len(ds.skipped_files) == 1
    expected = {s: sum(1 for line in (root / "labels" / f"{s}_subset0.csv").read_text().splitlines()[1:]
                       if "corrupt" not in line) for s in ("train", "val", "test")}
    assert {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)} == expected
    assert ds.train.counts(9)[8] == 6 and ds.test.counts(9)[8] == 2  # Negative: 10 images, 60/20/20
    assert "official split, fold 0 of 5" in ds.notes
    assert_disjoint(ds)
    fold1 = data.load("deep_weeds", image_size=32, fold=1)
    assert set(map(str, fold1.test.paths)) != set(map(str, ds.test.paths))
    with pytest.raises(KerascnnError, match="fold 3 is incomplete"):
        data.load("deep_weeds", image_size=32, fold=3)
    with pytest.raises(KerascnnError, match="--fold must be 0..4"):
        data.load("deep_weeds", fold=7)


def test_deep_weeds_without_split_files_falls_back_and_says_so(tmp_path):
    root = replicas.deep_weeds(tmp_path / "dw", folds=())
    ds = data.load("deep_weeds", data_dir=str(root), image_size=16)
    assert any("split CSVs absent" in note for note in ds.notes)
    assert ds.train.counts(9)[8] == 6 and ds.val.counts(9)[8] == 2 and ds.test.counts(9)[8] == 2
    assert_disjoint(ds)


@pytest.mark.slow
def test_deep_weeds_end_to_end(kerascnn_data, tmp_path):
    replicas.deep_weeds(kerascnn_data / "deep_weeds")
    out = tmp_path / "dw"
    assert run(["deep_weeds", "cnn", "--epochs", "1", "--image-size", "32", "--fold", "1", "--out", str(out),
                "--verbose", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_files"] == 1 and len(metrics["per_class"]) == 9


@pytest.mark.slow
def test_study_over_folds_reports_the_mean(kerascnn_data, tmp_path):
    replicas.deep_weeds(kerascnn_data / "deep_weeds")
    out = tmp_path / "study"
    path = tmp_path / "folds.toml"
    path.write_text('dataset = "deep_weeds"\nmodel = "cnn"\nepochs = 1\nimage_size = 16\nverbose = 0\n'
                    'grid.fold = [0, 1]\n[[config]]\nname = "cnn"\n')
    assert main(study_cli.body, study_cli.parser(), [str(path), "--out", str(out)]) == 0
    study = json.loads((out / "study.json").read_text())
    (row,) = study["configurations"]
    accuracies = [json.loads((out / f"cnn-fold-{k}-seed0" / "metrics.json").read_text())["accuracy"] for k in (0, 1)]
    assert row["runs_finished"] == 2 and row["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert (out / "cnn-fold-0-seed0" / "model.keras").is_file() and (out / "cnn-fold-1-seed0" / "report.md").is_file()


def test_fer2013_csv_splits_and_malformed_row(kerascnn_data):
    replicas.fer2013_csv(kerascnn_data / "fer2013")
    ds = data.load("fer2013")
    assert ds.class_names == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert ds.image_shape == (48, 48, 1) and not ds.streamed
    assert ds.train.counts(7) == [4] * 7 and ds.val.counts(7) == [1] * 7 and ds.test.counts(7) == [2] * 7
    assert len(ds.skipped_files) == 1


def test_fer2013_csv_row_with_non_numeric_pixels_is_skipped(kerascnn_data):
    root = kerascnn_data / "fer2013"
    replicas.fer2013_csv(root)
    with (root / "fer2013.csv").open("a") as f:
        f.write("2," + " ".join(["7"] * (48 * 48 - 1)) + " x,Training\n")
    ds = data.load("fer2013")
    assert len(ds.skipped_files) == 2 and ds.train.counts(7) == [4] * 7


@pytest.mark.slow
def test_fer2013_folders_end_to_end_with_class_weights(tmp_path):
    root = replicas.fer2013_folders(tmp_path / "fer")
    out = tmp_path / "run"
    assert run(["fer2013", "cnn", "--data-dir", str(root), "--epochs", "1", "--class-weight", "balanced",
                "--val-split", "0.25", "--out", str(out), "--verbose", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_names"][1] == "disgust" and metrics["dataset"]["image_shape"] == [64, 64, 1]
    assert metrics["dataset"]["sizes"] == {"train": 21, "val": 7, "test": 14}
    report = (out / "report.md").read_text()
    assert "| disgust |" in report and "recall" in report


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(KerascnnError, match="animals10 not found .*kaggle.*raw-img"):
        data.load("animals10")
    with pytest.raises(KerascnnError, match="deep_weeds not found"):
        data.load("deep_weeds")


def fake_tfds(splits):
    """A stand-in for tensorflow_datasets with ``splits`` = {name: (images, labels)}."""
    module = types.ModuleType("tensorflow_datasets")

    class Builder:
        def __init__(self, name, data_dir=None):
            if name != "toy/plain":
                raise ValueError(f"Dataset {name} not found.")
            label = types.SimpleNamespace(names=["a", "b"])
            self.info = types.SimpleNamespace(supervised_keys=("image", "label"), splits=dict.fromkeys(splits),
                                              features={"label": label})

        def download_and_prepare(self):
            pass

        def as_dataset(self, split, as_supervised):
            return list(zip(*splits[split]))

    module.builder = Builder
    module.as_numpy = lambda ds: ds
    return module


def test_tfds_bridge_uses_its_splits_and_carves_validation(monkeypatch):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (20 + i % 3, 24, 3), dtype=np.uint8) for i in range(30)]
    labels = [i % 2 for i in range(30)]
    monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                        fake_tfds({"train": (images[:20], labels[:20]), "test": (images[20:], labels[20:])}))
    ds = data.load("tfds:toy:plain", val_split=0.2, image_size=16)
    assert ds.class_names == ["a", "b"] and ds.image_shape == (16, 16, 3)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [16, 4, 10]
    with pytest.raises(KerascnnError, match="could not load tfds:nope"):
        data.load("tfds:nope")


def test_tfds_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(KerascnnError, match=r"pip install 'kerascnn\[tfds\]'"):
        data.load("tfds:mnist")
