"""What resuming a run needs, written at the end of every epoch to ``RUN_DIR/checkpoint/``: the
model's weights, the optimizer's state (its moments and step count, so the learning-rate schedule
continues where it was), the epoch reached and the best epoch so far. ``state.json`` is written
last, so a checkpoint is complete when it exists; an interrupted epoch is lost, nothing more."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from kerascnn.errors import KerascnnError

FOLDER = "checkpoint"


@dataclass
class State:
    """Progress of a run at the end of epoch ``epoch`` (1-based), and the best epoch so far by the
    monitored value (0 and inf: none yet)."""

    epoch: int
    best_epoch: int = 0
    best_value: float = float("inf")


def save(run_dir: str | Path, model: keras.Model, state: State) -> None:
    """Write the checkpoint of ``model`` (weights and optimizer state) at ``state``."""
    folder = Path(run_dir) / FOLDER
    folder.mkdir(exist_ok=True)
    model.save_weights(folder / "model.tmp.weights.h5")
    os.replace(folder / "model.tmp.weights.h5", folder / "model.weights.h5")
    np.savez(folder / "optimizer.tmp.npz", *[keras.ops.convert_to_numpy(v) for v in model.optimizer.variables])
    os.replace(folder / "optimizer.tmp.npz", folder / "optimizer.npz")
    (folder / "state.tmp.json").write_text(json.dumps(asdict(state)) + "\n")
    os.replace(folder / "state.tmp.json", folder / "state.json")


def load_state(run_dir: str | Path) -> State:
    """The state of ``run_dir``'s checkpoint; one error line when it has none."""
    path = Path(run_dir) / FOLDER / "state.json"
    try:
        return State(**json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        raise KerascnnError(f"{run_dir} has no complete checkpoint (it stopped before its first epoch ended); "
                            "start the run again") from None


def restore_weights(run_dir: str | Path, model: keras.Model) -> None:
    model.load_weights(Path(run_dir) / FOLDER / "model.weights.h5")


def restore_optimizer(run_dir: str | Path, model: keras.Model) -> None:
    """Give the compiled ``model``'s optimizer the checkpoint's state (same trainable variables)."""
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    with np.load(Path(run_dir) / FOLDER / "optimizer.npz") as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if [tuple(v.shape) for v in optimizer.variables] != [value.shape for value in values]:
        raise KerascnnError(f"{run_dir}: the checkpoint's optimizer state does not fit this model; start the run "
                            "again")
    for variable, value in zip(optimizer.variables, values):
        variable.assign(value)


def remove(run_dir: str | Path) -> None:
    """Delete the checkpoint of a finished run (nothing is left to resume)."""
    shutil.rmtree(Path(run_dir) / FOLDER, ignore_errors=True)


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes the checkpoint at the end of every epoch; ``best`` is the run's
    `kerascnn.training.BestEpoch` (its state goes in too)."""

    def __init__(self, run_dir: str | Path, best) -> None:
        super().__init__()
        self.run_dir, self.best = Path(run_dir), best

    def on_epoch_end(self, epoch, logs=None):
        save(self.run_dir, self.model, State(epoch + 1, self.best.epoch, self.best.value))
