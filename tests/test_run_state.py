"""A run folder says what state it is in: running, interrupted, failed or finished."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
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


def test_a_finished_run_is_marked_finished_and_its_config_json_is_the_resolved_config(tmp_path):
    given = kerascnn.RunConfig("digits", "cnn", epochs=1, out=str(tmp_path / "run"), verbose=0)
    out = kerascnn.run(given)
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    saved, resolved = kerascnn.RunConfig.load(out / "config.json"), kerascnn.resolve(given).config
    assert saved.environment["backend"] == keras.backend.backend()  # the start time and command differ
    assert dataclasses.replace(saved, environment={}) == dataclasses.replace(resolved, environment={})
    assert given.lr is None and saved.lr == 3e-3  # decided in the resolve step; the caller's config untouched
    with pytest.raises(KerascnnError, match="the run is finished"):
        kerascnn.resume(out)
    assert summarize_run(out)["epochs"] == 1


@pytest.mark.parametrize("signum, code, message", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                   (signal.SIGINT, 130, "interrupted")])
def test_a_signal_stops_a_run_cleanly_and_marks_it_interrupted(signum, code, message, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")}
    process = subprocess.Popen([sys.executable, "-m", "experiments.run", "digits", "cnn", "--epochs", "200",
                                "--patience", "0", "--out", str(out), "--verbose", "2"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint" / "state.json").is_file():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(message)
    assert read_status(out) == "interrupted"
    assert json.loads((out / "checkpoint" / "state.json").read_text())["epoch"] >= 1


@pytest.fixture
def batch_orders(monkeypatch):
    """``{(epoch, batch): the indices of that training batch}``, recorded as batches are served."""
    from kerascnn.data.pipeline import Batches

    seen, original = {}, Batches.__getitem__

    def getitem(self, batch):
        if self.shuffle:
            seen[(self._epoch, batch)] = self._order[batch * self.batch_size:(batch + 1) * self.batch_size].tolist()
        return original(self, batch)

    monkeypatch.setattr(Batches, "__getitem__", getitem)
    return seen


@pytest.mark.parametrize("stop", [3, 2], ids=["inside phase 2", "at the phase boundary"])  # and see the next test
def test_an_interrupted_run_resumes_from_its_last_epoch_as_the_whole_run_would(stop, tmp_path, batch_orders):
    """A two-phase run of 5 epochs interrupted after epoch ``stop`` and resumed: every epoch once in
    history.csv, the same batches in the same order and the same learning rates as an uninterrupted
    run of the same seed, the checkpoint gone once it finishes."""
    options = {"epochs": 5, "unfreeze_at": 2, "unfreeze": "all", "patience": 0, "verbose": 0}
    whole = kerascnn.run(kerascnn.RunConfig("digits", "cnn", out=str(tmp_path / "whole"), **options))
    whole_orders = dict(batch_orders)
    batch_orders.clear()
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        kerascnn.run(kerascnn.RunConfig("digits", "cnn", out=str(out), **options),
                     callbacks=[StopAt(stop, KeyboardInterrupt())])
    assert read_status(out) == "interrupted"
    assert json.loads((out / "checkpoint" / "state.json").read_text())["epoch"] == stop
    first_orders = {k: v for k, v in batch_orders.items() if k[0] < stop}
    batch_orders.clear()
    assert kerascnn.resume(out) == out and read_status(out) == "finished"
    assert not (out / "checkpoint").exists()  # a finished run has nothing left to resume
    assert {**first_orders, **batch_orders} == whole_orders
    history = [(d / "history.csv").read_text().splitlines() for d in (out, whole)]
    assert [line.split(",")[0] for line in history[0][1:]] == ["1", "2", "3", "4", "5"]
    lr = history[0][0].split(",").index("learning_rate")
    assert [row.split(",")[lr] for row in history[0][1:]] == [row.split(",")[lr] for row in history[1][1:]]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 5 and metrics["unfrozen_stages"] == ["block1", "block2", "head"]
    with pytest.raises(KerascnnError, match="the run is finished"):
        kerascnn.resume(out)


class Scramble(keras.callbacks.Callback):
    """Adds noise to the weights before every epoch from ``epoch`` (0-based) on: none of those is the best."""

    def __init__(self, epoch):
        super().__init__()
        self.first = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch >= self.first:
            for w in self.model.trainable_weights:
                w.assign(w + keras.random.normal(w.shape, stddev=1.0, seed=epoch))


def test_a_resumed_run_keeps_its_checkpoint_s_best_weights_not_a_lost_epoch_s(tmp_path):
    """An epoch that ended after the last checkpoint (BestEpoch had replaced best.weights.h5, the
    checkpoint was not yet written) is trained again: best.weights.h5 is the checkpoint's best epoch's."""
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        kerascnn.run(kerascnn.RunConfig("digits", "cnn", out=str(out), epochs=3, patience=0, verbose=0),
                     callbacks=[StopAt(2, KeyboardInterrupt())])
    best = json.loads((out / "checkpoint" / "state.json").read_text())["best_epoch"]
    kept = (out / "checkpoint" / f"model-{best}.weights.h5").read_bytes()
    (out / "best.weights.h5").write_bytes(b"the weights of an epoch the checkpoint never recorded")
    kerascnn.resume(out, callbacks=[Scramble(2)])
    assert (out / "best.weights.h5").read_bytes() == kept
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] == best


def test_a_resumed_run_rebuilds_the_architecture_it_recorded_not_today_s_preset():
    from kerascnn.runner import recorded_architecture

    # config.json of a run started before the preset pooled before its norms (no such key then)
    before = {"filters": [32, 64], "convs_per_block": 2, "kernel_size": 3, "batch_norm": True, "activation": "relu",
              "pool": "max", "dropout": 0.1, "dense": [128], "head_dropout": 0.5, "head_batch_norm": True,
              "global_pool": False}
    config = recorded_architecture(kerascnn.RunConfig("digits", "cnn", architecture=before, dropout=0.2))
    assert config.norm_after_pool is False and config.convs_per_block == [2] and config.filters == [32, 64]
    assert config.dropout == 0.2  # what the run was given stays
    assert recorded_architecture(kerascnn.RunConfig("digits", "cnn")).norm_after_pool is None  # nothing recorded
    backbone = kerascnn.RunConfig("digits", "resnet18", architecture={"backbone": "resnet18", "head_dropout": 0.0})
    assert recorded_architecture(backbone).filters is None


# Runs `python -m experiments.run ARGS` with one phase's function slowed down (it prints PHASE first): a
# signal then lands in that phase, as it would in a long one
SLOWED = """
import importlib, sys, time
target, seconds = sys.argv[1], float(sys.argv[2])
module_name, name = target.rsplit(".", 1)
module = importlib.import_module(module_name)
original = getattr(module, name)

def slowed(*args, **kwargs):
    sys.stdout.write("PHASE\\n")  # one write: threads may print it at once
    sys.stdout.flush()
    time.sleep(seconds)
    return original(*args, **kwargs)

setattr(module, name, slowed)
from experiments.run import cli
sys.argv = ["experiments.run", *sys.argv[3:]]
sys.exit(cli())
"""


@pytest.mark.parametrize("phase, target, seconds", [
    ("loading", "kerascnn.data.registry.get_source", 600),
    ("scanning", "kerascnn.data.images._content_digest", 0.5),  # each file, in the threads that check them
    ("decoding", "kerascnn.data.cache.read_image", 0.5),  # each image, in the decoding threads
    ("evaluation", "kerascnn.runner.evaluate_run", 600),
    ("writing", "kerascnn.runner.save_model", 600),
])
def test_a_signal_ends_every_phase_of_a_run_within_seconds(phase, target, seconds, tmp_path):
    """SIGTERM (SIGINT goes the same way: `test_a_signal_stops_a_run_cleanly_and_marks_it_interrupted`)."""
    signum, code = signal.SIGTERM, 143
    from helpers import write_folder

    dataset = "digits"
    if phase in ("scanning", "decoding"):  # image files
        dataset = f"folder:{write_folder(tmp_path / 'images', per_class=40, size=12)}"
    out = tmp_path / "run"
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")}
    process = subprocess.Popen([sys.executable, "-c", SLOWED, target, str(seconds), dataset, "cnn", "--epochs", "1",
                                "--cache", "ram", "--out", str(out), "--verbose", "0"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().startswith("PHASE"), process.communicate()
    time.sleep(0.5)
    process.send_signal(signum)
    _, err = process.communicate(timeout=10)
    assert process.returncode == code and "Traceback" not in err, err
    if out.exists():
        assert read_status(out) == "interrupted"


class StopInside(keras.callbacks.Callback):
    """Raises KeyboardInterrupt after batch ``batch`` (0-based) of epoch ``epoch`` (1-based)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise KeyboardInterrupt


def _history_without_times(run):
    rows = (run / "history.csv").read_text().splitlines()
    seconds = rows[0].split(",").index("seconds")
    return [[value for i, value in enumerate(row.split(",")) if i != seconds] for row in rows]


INTERRUPTIONS = {"after epoch 1": StopAt(1, KeyboardInterrupt()), "after epoch 2": StopAt(2, KeyboardInterrupt()),
                 "after epoch 3": StopAt(3, KeyboardInterrupt()), "after epoch 4": StopAt(4, KeyboardInterrupt()),
                 "after the last epoch": StopAt(5, KeyboardInterrupt()), "inside epoch 4": StopInside(4, 3)}


# Every interruption point on the default backend; on JAX and TensorFlow (slower to train here) the one
# inside an epoch, which needs both the counters and the epoch's random draws
@pytest.mark.parametrize("where", list(INTERRUPTIONS) if keras.backend.backend() == "torch" else ["inside epoch 4"])
def test_a_resumed_run_is_the_run_it_continues(where, tmp_path):
    """``--patience 2 --lr-schedule plateau``, its weights spoiled from epoch 4 on: the LR drops after
    epoch 4 and early stopping ends the run after epoch 5. Interrupted at each epoch boundary, or inside
    an epoch, and resumed, it has the same history (epochs, losses, learning rates, where it stopped)
    and the same final weights, bit for bit, as the run never interrupted: the early stopping and
    plateau counters, the best epoch, the optimizer and the epoch's random draws come back with it."""
    options = {"epochs": 8, "patience": 2, "lr_schedule": "plateau", "verbose": 0}
    whole = kerascnn.run(kerascnn.RunConfig("digits", "cnn", out=str(tmp_path / "whole"), **options),
                         callbacks=[Scramble(3)])
    whole_history = _history_without_times(whole)
    lr = whole_history[0].index("learning_rate")
    assert len(whole_history) == 1 + 5 and whole_history[5][lr] < whole_history[4][lr]  # the run this test needs
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        kerascnn.run(kerascnn.RunConfig("digits", "cnn", out=str(out), **options),
                     callbacks=[Scramble(3), INTERRUPTIONS[where]])
    kerascnn.resume(out, callbacks=[Scramble(3)])
    assert _history_without_times(out) == whole_history
    ours, theirs = (kerascnn.load_model(run)[0].get_weights() for run in (out, whole))
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] == \
        json.loads((whole / "metrics.json").read_text())["best_epoch"]
