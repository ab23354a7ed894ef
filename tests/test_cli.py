"""The command lines end to end, on a tiny synthetic folder dataset."""

import csv
import functools
import json

import numpy as np
import pytest
from PIL import Image

from experiments import predict as predict_cli
from experiments import run as run_cli
from experiments.cli import main
from kerascnn import distribute

RUN_FILES = {"config.json", "model.keras", "history.csv", "metrics.json", "curves.png", "confusion_matrix.png",
             "mistakes.png", "report.md", "best.weights.h5"}
METRIC_KEYS = {"accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1", "per_class",
               "confusion_matrix", "class_names", "trainable_params", "total_params", "epochs_run",
               "train_seconds", "seconds_per_epoch", "skipped_files"}


def run(argv):
    return main(run_cli.body, run_cli.parser(), argv)


def predict(argv):
    return main(predict_cli.body, predict_cli.parser(), argv)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from helpers import write_folder

    root = write_folder(tmp_path_factory.mktemp("data") / "colours", per_class=10)
    (root / "red" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path_factory.mktemp("runs") / "run1"
    code = run([f"folder:{root}", "cnn", "--epochs", "6", "--image-size", "16", "--batch-size", "8",
                "--out", str(out), "--verbose", "0", "--augment", "basic", "--lr", "0.01"])
    assert code == 0
    return out


@pytest.mark.slow
def test_run_folder_has_every_file(trained_run):
    assert RUN_FILES <= {p.name for p in trained_run.iterdir()}
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["skipped_files"] == 1
    assert metrics["class_names"] == ["blue", "green", "red"]
    assert metrics["accuracy"] >= 2 / 3  # colour classes are easy; chance is 1/3
    config = json.loads((trained_run / "config.json").read_text())
    assert config["epochs"] == 6 and config["environment"]["backend"] in ("torch", "jax", "tensorflow")
    assert config["environment"]["command"].startswith("python -m experiments.run folder:")
    assert config["architecture"]["filters"] == [32, 64]
    assert config["precision"] == distribute.auto_precision()  # --precision auto, resolved before it is saved
    report = (trained_run / "report.md").read_text()
    for text in ("test accuracy", "macro f1", "confusion_matrix.png", "mistakes.png", "unreadable files skipped: 1",
                 "corrupt.jpg\n", "working at 16×16 pixels"):
        assert text in report
    assert json.loads((trained_run / "status.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_existing_run_folder_is_never_overwritten(trained_run, capsys):
    before = (trained_run / "metrics.json").read_bytes()
    assert run(["digits", "cnn", "--out", str(trained_run)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (trained_run / "metrics.json").read_bytes() == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["imagenette", "cnn"], "valid datasets: fashion_mnist, digits"),
        (["digits", "resnet9000"], "valid models: cnn"),
        (["digits", "cnn", "--epochs", "0"], "--epochs must be"),
        (["digits", "cnn", "--split", "0.9,0.9,0.9"], "--split"),
        (["folder:/no/such/folder", "cnn"], "does not exist"),
        (["csv:/no/such/file.csv", "cnn"], "does not exist"),
        (["digits", "resnet18", "--filters", "8,16"], "--filters shapes scratch CNNs"),
        (["digits", "cnn", "--fold", "1"], "--fold must be 0"),
        (["digits", "cnn", "--nesterov"], "--nesterov applies to --optimizer sgd"),
        (["digits", "cnn", "--finetune-lr", "0.1"], "--finetune-lr is the LR after --unfreeze-at"),
        (["digits", "cnn", "--devices", "00"], "--devices takes a number >= 1"),
        (["digits", "cnn", "--weights", "nope.weights.h5"], "no such file"),
        (["digits", "cnn", "--weights", "imagenet"], "cnn has no ImageNet weights"),
        (["digits", "cnn", "--unfreeze", "layer9"], "has no stage 'layer9'"),
        (["digits", "cnn", "--epoch", "1"], "unrecognized arguments: --epoch"),
    ],
)
def test_bad_input_gives_one_line_and_status_2(argv, message, capsys, tmp_path):
    out = tmp_path / "never"
    assert run(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_predict_any_mode_and_writes_a_submission(trained_run, tmp_path, capsys):
    images = tmp_path / "mine"
    images.mkdir()
    red = np.zeros((40, 60, 3), np.uint8)
    red[..., 0] = 210
    Image.fromarray(red).save(images / "red_rgb.jpg")
    Image.fromarray(np.dstack([red, np.full((40, 60), 255, np.uint8)]), "RGBA").save(images / "red_rgba.png")
    Image.fromarray(red).convert("P").save(images / "red_palette.gif")
    Image.fromarray((np.linspace(0, 65535, 900).reshape(30, 30)).astype(np.uint16)).save(images / "grey16.png")
    (images / "broken.png").write_bytes(b"nope")
    submission = tmp_path / "submission.csv"
    assert predict([str(trained_run), str(images), "--csv", str(submission), "--top-k", "2"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 4 and all(line.count("%") == 2 for line in lines)
    assert "1 unreadable image(s) skipped" in captured.err
    rows = list(csv.DictReader(submission.open()))
    assert {r["id"] for r in rows} == {"red_rgb", "red_rgba", "red_palette", "grey16"}
    assert {r["label"] for r in rows if r["id"].startswith("red")} == {"red"}
    assert predict([str(trained_run / "model.keras"), str(images / "red_rgb.jpg"), "--csv", str(submission)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_predict_errors(tmp_path, capsys):
    assert predict([str(tmp_path), "x.png"]) == 2
    assert "no model at" in capsys.readouterr().err
    assert predict([str(tmp_path), "x.png", "--csv", str(tmp_path / "no" / "out.csv")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "--csv" in err and err.count("\n") == 1


def test_a_study_checks_every_fold_before_training(tmp_path, capsys):
    from experiments import study as study_cli

    out = tmp_path / "study"
    path = tmp_path / "folds.toml"
    path.write_text('dataset = "digits"\nmodel = "cnn"\ngrid.fold = [0, 1]\n[[config]]\nname = "a"\n')
    assert main(study_cli.body, study_cli.parser(), [str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "run a-fold-1-seed0: --fold must be 0" in err and err.count("\n") == 1
    assert not out.exists()


def test_the_command_lines_choose_the_backend_before_keras_is_imported():
    import subprocess
    import sys

    code = ("import sys, kerascnn, kerascnn.config, kerascnn.models, experiments.run, experiments.study; "
            "print(sorted(m for m in ('keras', 'torch', 'jax', 'tensorflow') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_submission_ids_are_unique_when_file_names_collide(tmp_path):
    paths = [str(tmp_path / p) for p in ("a/x.jpg", "a/x.png", "b/x.jpg", "b/y.jpg")]
    assert predict_cli.submission_ids(paths) == ["a/x.jpg", "a/x.png", "b/x.jpg", "y"]


def test_usage_errors_are_one_line_and_options_are_not_abbreviated(capsys):
    assert run(["digits", "cnn", "--epoch", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--epoch" in err and "see python -m experiments.run --help" in err


@pytest.mark.slow
def test_compare_runs_table(trained_run, tmp_path, capsys):
    from experiments import compare as compare_cli

    out = tmp_path / "table.md"
    compare = functools.partial(main, compare_cli.body, compare_cli.parser())
    assert compare([str(trained_run), str(trained_run), "--markdown", str(out)]) == 0
    table = capsys.readouterr().out
    assert table == out.read_text() and table.count("| run1 | cnn | none | all |") == 2
    assert "| precision |" in table and f"| {distribute.auto_precision()} |" in table
    assert compare([str(trained_run), "--markdown", str(out)]) == 2
    assert compare([str(tmp_path)]) == 2
    assert "is not a finished run (status unknown, no config.json)" in capsys.readouterr().err


def test_list_stages(capsys):
    assert run(["--list-stages", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "layer4" in out and "8,393,728" in out and "5,130" in out
    assert run(["--list-stages", "resnet9"]) == 2


@pytest.mark.parametrize("where", ["gc callback", "finalizer"])
def test_a_stop_signal_where_python_would_drop_the_raise_is_left_to_the_next_batch(where):
    """Python prints an exception raised in a gc callback or a finalizer as "Exception ignored", with a
    traceback, and drops it (a SIGINT that landed in JAX's gc callback did): there the handler only
    records the request, which `kerascnn.training.StopWhenAsked` raises at the next batch; elsewhere
    it raises at once."""
    import gc
    import signal
    import sys

    from kerascnn import errors

    raised = []

    def handle():
        try:
            errors.request_stop(signal.SIGINT, sys._getframe())
            raised.append(False)
        except KeyboardInterrupt:
            raised.append(True)

    try:
        if where == "gc callback":
            def callback(phase, info):
                handle()

            gc.callbacks.append(callback)
            try:
                gc.collect()
            finally:
                gc.callbacks.remove(callback)
        else:
            class Finalized:
                def __del__(self):
                    handle()

            Finalized()
        assert raised and not any(raised)
        assert isinstance(errors.stop_requested[-1], KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            errors.request_stop(signal.SIGINT, sys._getframe())
    finally:
        errors.stop_requested.clear()
