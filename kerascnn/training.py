"""Compile and fit: optimizers, learning-rate schedules, callbacks and the input pipelines."""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from kerascnn import checkpoint, rundir
from kerascnn.config import RunConfig
from kerascnn.data import Dataset
from kerascnn.data.augment import LabelMixing, augmentation
from kerascnn.data.pipeline import Batches
from kerascnn.distribute import replicas
from kerascnn.errors import KerascnnError, stop_requested
from kerascnn.models import set_trainable
from kerascnn.optimizers import optimizer_classes

if TYPE_CHECKING:
    from kerascnn.torch_fast import FastSteps

ONECYCLE_WARMUP = 0.3  # fraction of steps spent warming up, as PyTorch's OneCycleLR
ONECYCLE_DIV = 25.0  # initial LR = lr / 25, as PyTorch's OneCycleLR


@dataclass(frozen=True)
class Phase:
    """Epochs ``start``..``stop`` (exclusive) trained with stages ``unfreeze`` at peak LR ``lr``."""

    start: int
    stop: int
    unfreeze: str
    lr: float

    @property
    def epochs(self) -> int:
        return self.stop - self.start


def phases(config: RunConfig) -> list[Phase]:
    """One phase, or with ``unfreeze_at`` the head alone first, then the ``unfreeze`` stages with
    ``finetune_lr`` (default ``lr / 10``)."""
    require_decided(config)
    if not config.unfreeze_at:
        return [Phase(0, config.epochs, config.unfreeze, config.lr)]
    at, finetune = config.unfreeze_at, config.finetune_lr or config.lr / 10
    return [Phase(0, at, "none", config.lr), Phase(at, config.epochs, config.unfreeze, finetune)]


def require_decided(config: RunConfig) -> None:
    """Raise `KerascnnError` unless ``config`` has its defaults decided (`kerascnn.resolution.resolve`):
    training never decides them itself."""
    if None in (config.weights, config.unfreeze, config.lr, config.label_smoothing, config.lr_schedule):
        raise KerascnnError("training takes a resolved config: pass kerascnn.resolution.resolve(config).training")


def learning_rate(config: RunConfig, steps_per_epoch: int, phase: Phase | None = None
                  ) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The LR (or per-step schedule) of ``config.lr_schedule`` over one phase (default: the whole
    run); ``plateau`` is a callback on a constant LR."""
    phase = phase or phases(config)[0]
    lr, total = phase.lr, max(1, phase.epochs * steps_per_epoch)
    if config.lr_schedule in ("constant", "plateau"):
        return lr
    if config.lr_schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            lr, decay_steps=config.lr_step * steps_per_epoch, decay_rate=config.lr_gamma, staircase=True)
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=total)
    warmup = max(1, int(ONECYCLE_WARMUP * total))
    return keras.optimizers.schedules.CosineDecay(
        lr / ONECYCLE_DIV, decay_steps=max(1, total - warmup), alpha=1e-3 / ONECYCLE_DIV,
        warmup_target=lr, warmup_steps=warmup)


def make_optimizer(config: RunConfig, steps_per_epoch: int, phase: Phase | None = None,
                   lr: float | keras.optimizers.schedules.LearningRateSchedule | None = None
                   ) -> keras.optimizers.Optimizer:
    """Adam, AdamW or SGD (momentum, Nesterov) with decoupled weight decay that spares biases and
    norms; with ``backbone_lr_scale`` != 1, the discriminative variant. ``lr`` replaces the
    schedule of `learning_rate` (the LR range test's)."""
    lr = learning_rate(config, steps_per_epoch, phase) if lr is None else lr
    plain, scaled = optimizer_classes(config.optimizer)
    kwargs: dict = {"weight_decay": config.weight_decay or None}
    if config.optimizer == "sgd":
        kwargs.update(momentum=config.momentum, nesterov=config.nesterov)
    if config.backbone_lr_scale != 1.0:
        opt = scaled(lr, backbone_lr_scale=config.backbone_lr_scale, **kwargs)
    else:
        opt = plain(lr, **kwargs)
    if config.weight_decay:
        opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return opt


def compile_model(model: keras.Model, config: RunConfig, steps_per_epoch: int, phase: Phase | None = None,
                  lr: float | keras.optimizers.schedules.LearningRateSchedule | None = None) -> dict[str, Any]:
    """Compile with a fresh optimizer (``lr``: see `make_optimizer`), label-smoothed cross-entropy
    on softmax outputs, and accuracy; return whether the fast path trains it (`FastPath.record`).

    On the torch backend the model then gets kerascnn's fast steps (`kerascnn.torch_fast`; with
    ``jit`` True, compiled by ``torch.compile``) unless ``jit`` is False, which keeps Keras' own.
    On JAX and TensorFlow ``jit`` is Keras' ``jit_compile`` (None: Keras' "auto").
    """
    require_decided(config)
    fast = config.uses_fast_path(keras.backend.backend())
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch, phase, lr),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=False if fast else "auto" if config.jit is None else config.jit,
    )
    if fast:
        from kerascnn import torch_fast

        return torch_fast.install(model, jit=bool(config.jit)).record()
    why = "--no-jit keeps Keras' own step" if keras.backend.backend() == "torch" else "the fast path is torch's"
    return {"used": False, "reason": why, "keras": keras.version()}


def fast_steps(model: keras.Model) -> FastSteps | None:
    """The fast torch steps (`kerascnn.torch_fast.FastSteps`) the compiled ``model`` trains through, if any."""
    if keras.backend.backend() != "torch":
        return None
    from kerascnn.torch_fast import FastSteps

    steps = getattr(model.train_function, "__self__", None)
    return steps if isinstance(steps, FastSteps) else None


def uses_fast_path(model: keras.Model) -> bool:
    """Whether the compiled ``model`` trains through kerascnn's fast torch steps."""
    return fast_steps(model) is not None


class EpochLog(keras.callbacks.Callback):
    """Adds ``learning_rate`` and ``seconds`` to each epoch's logs (and so to ``history.csv``)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            opt = self.model.optimizer
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(opt.learning_rate))
            logs["seconds"] = time.perf_counter() - self._start


@dataclass
class TrainResult:
    """What `fit` did: the per-epoch history, epochs run, the best epoch and wall time."""

    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int
    train_seconds: float
    stopped_early: bool
    skipped_files: set[str] = field(default_factory=set)
    stages: dict[str, list[str]] = field(default_factory=dict)
    unfrozen_at: int | None = None
    fast_path: dict[str, Any] = field(default_factory=dict)  # `compile_model`'s verdict: a phase's fallback, if any

    @property
    def seconds_per_epoch(self) -> float:
        return self.train_seconds / max(1, self.epochs_run)


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Balanced weights n / (k * count) per class (scikit-learn's "balanced"), 0 for absent classes."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights


def train_batches(dataset: Dataset, config: RunConfig, multiple: int = 1) -> Batches:
    """The shuffled, augmented training pipeline for ``config`` (batches divisible by ``multiple``)."""
    augment = augmentation(config.augment, flip=config.flip, rotate=config.rotate, translate=config.translate,
                           erase=config.erase)
    weights = class_weights(dataset.train.labels, dataset.num_classes) if config.class_weight == "balanced" else None
    return Batches(dataset.train, dataset.image_shape, dataset.num_classes, config.batch_size, shuffle=True,
                   seed=config.seed, augment=augment, mixing=LabelMixing(config.mixup, config.cutmix),
                   class_weights=weights, workers=config.workers or None,
                   multiple=multiple)


def eval_batches(dataset: Dataset, split: str, batch_size: int, workers: int = 0, multiple: int = 1,
                 mirror: bool = False) -> Batches:
    """An unshuffled, unaugmented pipeline over ``split`` (train, val or test); ``mirror`` flips
    every image horizontally."""
    return Batches(getattr(dataset, split), dataset.image_shape, dataset.num_classes, batch_size,
                   workers=workers or None, multiple=multiple, mirror=mirror)


def fit(model: keras.Model, dataset: Dataset, config: RunConfig, run_dir: str | Path | None = None,
        callbacks: list[keras.callbacks.Callback] | None = None, resume: bool = False) -> TrainResult:
    """Train ``model`` with ``model.fit`` on ``dataset`` as ``config`` says, phase by phase.

    Each phase sets which stages train (`kerascnn.models.set_trainable`) and compiles afresh, as
    Keras requires after trainability changes. The model ends with the weights of the best epoch of
    the whole run by validation loss (training loss without a validation set; `BestEpoch`).
    Callbacks: early stopping (``patience`` > 0; not while only the head warms up before
    ``unfreeze_at``), ``plateau`` LR reduction, a NaN guard, and, with ``run_dir``, the best
    weights (``best.weights.h5``), ``history.csv`` and, every epoch, what resuming needs
    (`kerascnn.checkpoint`); ``callbacks`` come after these. ``resume`` continues ``run_dir``'s run
    from its checkpoint: the epochs it ran are kept, not repeated.
    """
    multiple = replicas()
    train = train_batches(dataset, config, multiple)
    has_val = len(dataset.val) > 0
    val = eval_batches(dataset, "val", max(config.batch_size, 256), config.workers, multiple) if has_val else None
    best = BestEpoch("val_loss" if has_val else "loss", Path(run_dir) / "best.weights.h5" if run_dir else None)
    plan = phases(config)
    logs: dict[str, list[float]] = {}
    best.set_model(model)
    done, over = 0, False
    state = checkpoint.State(0)
    if resume:
        state = checkpoint.load_state(run_dir)
        done, over = state.epoch, state.training_done
        logs = history_until(Path(run_dir) / "history.csv", done)
        if state.best_epoch:
            checkpoint.restore_weights(run_dir, model, state.best_epoch)
            # an epoch that ended after the checkpoint may have replaced best.weights.h5: the checkpoint's counts
            best.load_state_dict({"value": state.best_value, "epoch": state.best_epoch},
                                 checkpoint.weights_file(run_dir, state.best_epoch))
        checkpoint.restore_weights(run_dir, model, done)
    stages, start, earlier, fast_path = {}, time.perf_counter(), sum(logs.get("seconds", [])), {}
    for i, phase in enumerate(plan):
        stages = set_trainable(model, phase.unfreeze, config.bn_policy)
        if phase.stop <= done or over:  # trained before the run was resumed
            continue
        verdict = compile_model(model, config, len(train), phase)
        fast_path = fast_path if fast_path and not fast_path["used"] else verdict  # a fallback in any phase shows
        warmup_only = len(plan) > 1 and i == 0
        counters = _counters(config, best.monitor, warmup_only)
        if phase.start < done:  # resuming inside the phase the checkpoint was taken in: its optimizer and counters
            checkpoint.restore_optimizer(run_dir, model, done)
            for name, callback in counters.items():
                callback.load_state_dict(state.callbacks.get(name, {}))
        own = [StopWhenAsked(), EpochSeeds(train, config.seed),
               *_callbacks(best, counters, run_dir, append=i > 0 or done > 0)]
        own += [checkpoint.EpochCheckpoint(run_dir, best, counters, config.epochs), EpochStatus(run_dir)] \
            if run_dir else []
        # shuffle=False: the batches are shuffled already, seeded by the epoch (Keras would also
        # reorder a PyDataset's batches with Python's `random`, whose state a resumed run does not restore)
        history = model.fit(train.for_fit(), validation_data=None if val is None else val.for_fit(), shuffle=False,
                            initial_epoch=max(phase.start, done), epochs=phase.stop,
                            callbacks=[*own, *(callbacks or [])], verbose=progress_verbosity(config.verbose))
        for key, values in history.history.items():
            logs.setdefault(key, []).extend(float(v) for v in values)
        _check_finite(logs.get("loss", []), config)
        if model.stop_training:
            break
    seconds = earlier + time.perf_counter() - start
    best.restore()
    losses = logs.get("loss", [])
    return TrainResult(logs, len(losses), best.epoch, seconds, stopped_early=len(losses) < config.epochs,
                       skipped_files=set(train.skipped) | (val.skipped if val else set()), stages=stages,
                       unfrozen_at=config.unfreeze_at, fast_path=fast_path)


def history_until(path: Path, epochs: int) -> dict[str, list[float]]:
    """Cut ``history.csv`` back to its first ``epochs`` rows (an epoch that ended after the last
    checkpoint is trained again); return them as lists per column, the epoch column left out."""
    lines = path.read_text().splitlines(keepends=True)[:epochs + 1]
    path.write_text("".join(lines))
    rows = list(csv.DictReader(lines))
    return {key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {}) if key != "epoch"}


def progress_verbosity(verbose: int | str) -> int | str:
    """Keras' ``verbose`` for ``fit``: ``auto`` is the progress bar on a terminal and one plain line
    per epoch when the output goes to a file or a pipe."""
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return verbose


class Resumable:
    """A callback whose counters a checkpoint keeps (`state_dict`) and a resumed run gives back
    (`load_state_dict`, applied when training begins, after the callback's own reset), as Lightning's
    callbacks do: a resumed run stops, and lowers its learning rate, when the whole run would."""

    STATE: tuple[str, ...] = ()
    _loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {name: _plain(getattr(self, name)) for name in self.STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._loaded = {name: state[name] for name in self.STATE if name in state}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for name, value in (self._loaded or {}).items():
            setattr(self, name, value)
        self._loaded = None


class EarlyStopping(Resumable, keras.callbacks.EarlyStopping):
    """Keras' early stopping, resumable: its epochs without improvement and best value."""

    STATE = ("wait", "stopped_epoch", "best", "best_epoch")


class ReduceLROnPlateau(Resumable, keras.callbacks.ReduceLROnPlateau):
    """Keras' plateau LR reduction, resumable (the reduced LR itself is the optimizer's, in its state)."""

    STATE = ("wait", "cooldown_counter", "best")


def _plain(value: Any) -> Any:
    """A JSON value of a counter (numpy and backend scalars become Python numbers)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return float(keras.ops.convert_to_numpy(value))


class BestEpoch(keras.callbacks.Callback):
    """The best epoch of the whole run (every phase) by ``monitor``, lowest wins and a NaN or infinite
    value never does: its weights are kept in memory (and saved to ``path``) and `restore` puts them
    back. Shared by the phases of one `fit`."""

    def __init__(self, monitor: str, path: Path | None = None) -> None:
        super().__init__()
        self.monitor, self.path = monitor, path
        self.value, self.epoch, self.weights = math.inf, 0, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value) or value >= self.value:
            return
        self.value, self.epoch, self.weights = float(value), epoch + 1, self.model.get_weights()
        if self.path is not None:  # replaced whole: an interruption never leaves half a file
            checkpoint.write_whole(self.path, self.model.save_weights, checkpoint.weights_size(self.model))

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any], weights_file: Path) -> None:
        """Take a checkpoint's best epoch, whose weights the model holds now and ``weights_file`` keeps
        (copied to ``path``)."""
        self.value, self.epoch, self.weights = float(state["value"]), int(state["epoch"]), self.model.get_weights()
        if self.path is not None:
            checkpoint.copy_file(weights_file, self.path)

    def saved_file(self, epoch: int) -> Path | None:
        """The file holding epoch ``epoch``'s weights if it is the best so far (then a checkpoint copies it)."""
        return self.path if epoch == self.epoch else None

    def restore(self) -> None:
        """Give the model the best epoch's weights (nothing to do when no epoch had a finite value)."""
        if self.weights is not None:
            self.model.set_weights(self.weights)


class StopWhenAsked(keras.callbacks.Callback):
    """Raises the interruption a signal handler asked for (`kerascnn.errors.stop_requested`) at the
    end of the next batch, in case the handler's own raise was swallowed inside a C call. It only
    reads a list, so it is safe for Keras' asynchronous batch callbacks (it must not make Keras wait
    for every step's logs); there the raise surfaces when the epoch's callbacks are flushed."""

    async_safe = True

    def _check(self, batch, logs=None):
        if stop_requested:
            raise stop_requested[-1]

    on_train_batch_end = on_test_batch_end = on_predict_batch_end = _check


class EpochSeeds(keras.callbacks.Callback):
    """Starts each epoch from the run's seed and the epoch alone: the training batches' order and
    flips, and every random draw of the epoch (dropout masks: the backend's and NumPy's generators,
    and the model's seed generators). So a run resumed at an epoch trains it as the whole run did.
    (Keras also advances a PyDataset once at the start of every ``fit``.)"""

    def __init__(self, batches: Batches, seed: int) -> None:
        super().__init__()
        self.batches, self.seed = batches, seed

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.start_at(epoch)
        epoch_seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0] % 2**31)
        keras.utils.set_random_seed(epoch_seed)
        weights = {id(w) for w in self.model.weights}
        for i, state in enumerate(v for v in self.model.variables if id(v) not in weights):  # seed generators
            state.assign(np.array([(epoch_seed + i) % 2**31, 0], keras.backend.standardize_dtype(state.dtype)))


class EpochStatus(keras.callbacks.Callback):
    """Marks ``run_dir`` running by this process at every epoch end, so ``status.json`` counts the
    epochs done (after ``history.csv`` has the epoch)."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__()
        self.run_dir = run_dir

    def on_epoch_end(self, epoch, logs=None):
        rundir.mark(self.run_dir, "running", pid=os.getpid())


class EpochCSVLogger(keras.callbacks.CSVLogger):
    """Keras' CSVLogger with epochs numbered from 1, as Keras prints them and the report counts."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch + 1, logs)


def _counters(config: RunConfig, monitor: str, warmup_only: bool) -> dict[str, Resumable]:
    """The callbacks of one phase whose counters a checkpoint keeps, by the name it keeps them under."""
    counters: dict[str, Resumable] = {}
    if config.lr_schedule == "plateau":
        counters["plateau"] = ReduceLROnPlateau(monitor, factor=config.lr_gamma,
                                                patience=max(1, config.patience // 2), verbose=1)
    if config.patience and not warmup_only:  # stops only; BestEpoch restores over the whole run
        counters["early_stopping"] = EarlyStopping(monitor, patience=config.patience, verbose=1)
    return counters


def _callbacks(best: BestEpoch, counters: dict[str, Resumable], run_dir: str | Path | None,
               append: bool) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = [EpochLog(), keras.callbacks.TerminateOnNaN(), best,
                                                 *counters.values()]
    if run_dir is not None:
        callbacks.append(EpochCSVLogger(str(Path(run_dir) / "history.csv"), append=append))
    return callbacks


def _check_finite(losses: list[float], config: RunConfig) -> None:
    if any(not math.isfinite(v) for v in losses):
        raise KerascnnError(
            f"training diverged: the loss became NaN or infinite in epoch {len(losses)}; "
            f"try a lower --lr (now {config.lr:g})"
            + (" or --optimizer sgd" if config.optimizer != "sgd" else "")
        )
