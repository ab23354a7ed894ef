"""What resuming a run needs, written at the end of every epoch to ``RUN_DIR/checkpoint/``: the
model's weights (``model-N.weights.h5``), the optimizer's state (``optimizer-N.npz``: moments and
step count, so the learning-rate schedule continues), and ``state.json``: the epoch reached, the
best epoch so far (whose weights file is kept) and whether training is over.

Files carry their epoch and ``state.json`` is replaced last, so whenever the process stops (Ctrl-C,
SIGTERM, a kill) ``state.json`` names a complete set; an interrupted epoch is lost, nothing more.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from kerascnn.errors import KerascnnError
from kerascnn.rundir import write_whole

FOLDER = "checkpoint"


@dataclass
class State:
    """Progress of a run at the end of epoch ``epoch`` (1-based): the best epoch so far by the
    monitored value (0 and inf: none yet), whether training is over (the last epoch, or early
    stopping; a resumed run that is over only evaluates and reports) and the counters of the phase's
    resumable callbacks by name (`kerascnn.training.Resumable`: early stopping, plateau)."""

    epoch: int
    best_epoch: int = 0
    best_value: float = float("inf")
    training_done: bool = False
    callbacks: dict[str, dict] = field(default_factory=dict)


def _weights(folder: Path, epoch: int) -> Path:
    return folder / f"model-{epoch}.weights.h5"


def weights_size(model: keras.Model) -> int:
    """The bytes of ``model``'s weights (what a weights file holds, less HDF5's own)."""
    return sum(int(np.prod(v.shape)) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
               for v in model.weights)


def copy_file(source: Path, target: Path) -> None:
    """Replace ``target`` with a copy of ``source`` as a whole (`write_whole`)."""
    write_whole(target, lambda partial: shutil.copyfile(source, partial), source.stat().st_size)


def weights_file(run_dir: str | Path, epoch: int) -> Path:
    """The checkpoint's file of ``epoch``'s weights (it keeps the last epoch's and the best one's)."""
    return _weights(Path(run_dir) / FOLDER, epoch)


def save(run_dir: str | Path, model: keras.Model, state: State, saved_weights: Path | None = None) -> None:
    """Write the checkpoint of ``model`` (weights and optimizer state) at ``state``. ``saved_weights``,
    a file ``model.save_weights`` wrote at this state (the best epoch's, when this one is the best),
    is copied rather than the weights saved again (docs/design/checkpoints.md)."""
    folder = Path(run_dir) / FOLDER
    folder.mkdir(exist_ok=True)
    size = weights_size(model)
    if saved_weights is not None:
        copy_file(saved_weights, _weights(folder, state.epoch))
    else:
        write_whole(_weights(folder, state.epoch), model.save_weights, size)
    optimizer = folder / f"optimizer-{state.epoch}.npz"
    slots = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
    write_whole(optimizer, lambda partial: np.savez(partial, *slots), sum(v.nbytes for v in slots))
    write_whole(folder / "state.json", lambda partial: partial.write_text(json.dumps(asdict(state)) + "\n"))
    keep = {_weights(folder, state.epoch), _weights(folder, state.best_epoch), optimizer, folder / "state.json"}
    for path in folder.iterdir():
        if path not in keep:
            path.unlink()


def load_state(run_dir: str | Path) -> State:
    """The state of ``run_dir``'s checkpoint; one error line when it has none."""
    path = Path(run_dir) / FOLDER / "state.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KerascnnError(f"{run_dir} has no complete checkpoint (it stopped before its first epoch ended); "
                            "start the run again") from None
    try:
        return State(**json.loads(text))
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as exc:
        raise KerascnnError(f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:80]}); the checkpoint is "
                            "damaged: start the run again") from None


def restore_weights(run_dir: str | Path, model: keras.Model, epoch: int) -> None:
    """Load the weights the checkpoint kept for ``epoch`` (the last one or the best one)."""
    try:
        model.load_weights(weights_file(run_dir, epoch))
    except (OSError, ValueError) as exc:
        raise KerascnnError(f"{run_dir}: the checkpoint's weights of epoch {epoch} do not load "
                            f"({str(exc).splitlines()[0]}); start the run again") from None


def restore_optimizer(run_dir: str | Path, model: keras.Model, epoch: int) -> None:
    """Give the compiled ``model``'s optimizer the checkpoint's state of ``epoch``."""
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    try:
        with np.load(Path(run_dir) / FOLDER / f"optimizer-{epoch}.npz") as saved:
            values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:  # missing, empty or truncated
        raise KerascnnError(f"{run_dir}: the checkpoint's optimizer state does not load ({exc}); start the run "
                            "again") from None
    if [tuple(v.shape) for v in optimizer.variables] != [value.shape for value in values]:
        raise KerascnnError(f"{run_dir}: the checkpoint's optimizer state does not fit this model; start the run "
                            "again")
    for variable, value in zip(optimizer.variables, values):
        variable.assign(value)


def remove(run_dir: str | Path) -> None:
    """Delete the checkpoint of a finished run (nothing is left to resume)."""
    shutil.rmtree(Path(run_dir) / FOLDER, ignore_errors=True)


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes the checkpoint at the end of every epoch with a finite loss (a diverged epoch is not
    worth resuming from): ``best`` is the run's `kerascnn.training.BestEpoch` (it runs first; an
    epoch it has just saved as the best is copied from its file), ``counters`` the phase's resumable
    callbacks by name, ``last_epoch`` the run's final epoch."""

    def __init__(self, run_dir: str | Path, best, counters: dict, last_epoch: int) -> None:
        super().__init__()
        self.run_dir, self.best, self.counters, self.last_epoch = Path(run_dir), best, counters, last_epoch

    def on_epoch_end(self, epoch, logs=None):
        if not np.isfinite((logs or {}).get("loss", 0.0)):
            return
        done = epoch + 1 == self.last_epoch or bool(self.model.stop_training)
        best = self.best.state_dict()
        state = State(epoch + 1, best["epoch"], best["value"], done,
                      {name: callback.state_dict() for name, callback in self.counters.items()})
        save(self.run_dir, self.model, state, self.best.saved_file(epoch + 1))
