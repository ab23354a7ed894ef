"""A run folder says what state it is in: running, interrupted, failed or finished."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

import kerascnn
from kerascnn.errors import KerascnnError
from kerascnn.reports import summarize_run
from kerascnn.rundir import read_status

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


class StopAt(keras.callbacks.Callback):
    """Raises ``exc`` at the end of epoch ``epoch`` (1-based), after the epoch's files are written."""

    def __init__(self, epoch, exc):
        super().__init__()
        self.epoch, self.exc = epoch, exc

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise self.exc


@pytest.mark.parametrize("exc, status", [(KeyboardInterrupt(), "interrupted"), (RuntimeError("disk full"), "failed")])
def test_a_stopped_run_is_marked_and_compare_says_so(exc, status, tmp_path):
    out = tmp_path / "run"
    config = kerascnn.RunConfig("digits", "cnn", epochs=5, out=str(out), verbose=0)
    with pytest.raises(type(exc)):
        kerascnn.run(config, callbacks=[StopAt(2, exc)])
    state = json.loads((out / "status.json").read_text())
    assert state["status"] == status and read_status(out) == status and state["epochs_done"] == 2
    assert status == "interrupted" or state["error"] == "disk full"
    assert (out / "config.json").is_file() and (out / "best.weights.h5").is_file()
    with pytest.raises(KerascnnError, match=f"status {status}"):
        summarize_run(out)


def test_a_finished_run_is_marked_finished(tmp_path):
    out = kerascnn.run(kerascnn.RunConfig("digits", "cnn", epochs=1, out=str(tmp_path / "run"), verbose=0))
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    with pytest.raises(KerascnnError, match="the run is finished"):
        kerascnn.resume(out)
    assert summarize_run(out)["epochs"] == 1


def test_sigterm_stops_a_run_cleanly_and_marks_it_interrupted(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")}
    process = subprocess.Popen([sys.executable, "-m", "experiments.run", "digits", "cnn", "--epochs", "200",
                                "--patience", "0", "--out", str(out), "--verbose", "2"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not ((out / "history.csv").is_file() and len((out / "history.csv").read_text().splitlines()) > 1):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("terminated (SIGTERM)")
    assert read_status(out) == "interrupted"
    assert json.loads((out / "checkpoint" / "state.json").read_text())["epoch"] >= 1


def test_an_interrupted_run_resumes_from_its_last_epoch_and_ends_as_the_whole_run_would(tmp_path):
    """Interrupted after epoch 3 of 5, in the second phase of a two-phase run, then resumed: the
    result has 5 epochs of history, continues the learning-rate schedule, and matches an
    uninterrupted run of the same seed (no augmentation, so the batches are the same)."""
    options = {"epochs": 5, "unfreeze_at": 2, "unfreeze": "all", "patience": 0, "verbose": 0}
    whole = kerascnn.run(kerascnn.RunConfig("digits", "cnn", out=str(tmp_path / "whole"), **options))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        kerascnn.run(kerascnn.RunConfig("digits", "cnn", out=str(out), **options),
                     callbacks=[StopAt(3, KeyboardInterrupt())])
    assert read_status(out) == "interrupted"
    assert json.loads((out / "checkpoint" / "state.json").read_text())["epoch"] == 3
    assert kerascnn.resume(out) == out and read_status(out) == "finished"
    assert not (out / "checkpoint").exists()  # a finished run has nothing left to resume
    lines = (out / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "4", "5"]
    resumed, straight = (json.loads((d / "metrics.json").read_text()) for d in (out, whole))
    history = [(d / "history.csv").read_text().splitlines() for d in (out, whole)]
    header = history[0][0].split(",")
    lr = header.index("learning_rate")
    assert [row.split(",")[lr] for row in history[0][1:]] == [row.split(",")[lr] for row in history[1][1:]]
    assert resumed["epochs_run"] == 5 and resumed["accuracy"] == pytest.approx(straight["accuracy"], abs=0.03)
    with pytest.raises(KerascnnError, match="finished"):
        kerascnn.resume(out)
