"""The learning-rate range test (Smith 2017; fastai's ``lr_find``): train with a learning rate
that grows exponentially every step, record the loss, and suggest the LR a tenth of the way
below the one with the lowest (smoothed) loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from kerascnn import rundir
from kerascnn.config import RunConfig
from kerascnn.errors import KerascnnError

SMOOTHING = 0.98  # exponential moving average of the loss, debiased as fastai's
DIVERGED = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum


@dataclass
class RangeTest:
    """The LR of each step, the smoothed loss after it, the suggested LR, and the resolved config
    it was measured with."""

    learning_rates: list[float]
    losses: list[float]
    suggestion: float
    config: RunConfig

    def to_dict(self) -> dict[str, object]:
        return {"learning_rates": self.learning_rates, "losses": self.losses, "suggestion": self.suggestion,
                "rule": "a tenth of the LR with the lowest smoothed loss"}


class _Growing(keras.optimizers.schedules.LearningRateSchedule):
    """``start * (end / start) ** (step / steps)``."""

    def __init__(self, start: float, end: float, steps: int) -> None:
        self.start, self.end, self.steps = start, end, steps

    def __call__(self, step):
        fraction = keras.ops.cast(step, "float32") / self.steps
        return self.start * keras.ops.power(self.end / self.start, fraction)

    def get_config(self) -> dict[str, float]:
        return {"start": self.start, "end": self.end, "steps": self.steps}


class _Recorder(keras.callbacks.Callback):
    """Per-step losses from Keras' running epoch mean; stops once the loss diverges or the steps run out."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.learning_rates: list[float] = []
        self.losses: list[float] = []
        self._average, self._best, self._mean, self._seen = 0.0, math.inf, 0.0, 0

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._mean, self._seen = 0.0, 0

    def on_train_batch_begin(self, batch, logs=None) -> None:
        # the LR this step uses, as the optimizer computes it from its step count
        self.learning_rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_train_batch_end(self, batch, logs=None) -> None:
        mean = float(logs["loss"])
        loss = mean * (self._seen + 1) - self._mean * self._seen  # this batch's loss, from the running mean
        self._mean, self._seen = mean, self._seen + 1
        step = len(self.losses)
        self._average = SMOOTHING * self._average + (1 - SMOOTHING) * loss
        smoothed = self._average / (1 - SMOOTHING ** (step + 1))
        self.losses.append(smoothed)
        self._best = min(self._best, smoothed)
        if not math.isfinite(smoothed) or smoothed > DIVERGED * self._best or len(self.losses) >= self.steps:
            self.model.stop_training = True


def range_test(config: RunConfig, steps: int = 200, start: float = 1e-7, end: float = 10.0) -> RangeTest:
    """Run the LR range test for ``config`` (its data, model, weights, trainable stages, optimizer)."""
    from kerascnn import models, runner, training

    if steps < 10:
        raise KerascnnError(f"--steps must be >= 10, got {steps}")
    if not 0 < start < end:
        raise KerascnnError(f"--start-lr and --end-lr need 0 < start < end, got {start} and {end}")
    config = runner.check_and_resolve(config).training
    keras.utils.set_random_seed(config.seed)
    dataset = runner.load_dataset(config)
    with models.dtype_policy(config.precision):
        model = runner.build_model(config, dataset)
        models.set_trainable(model, training.phases(config)[0].unfreeze, config.bn_policy)
        schedule = _Growing(start, end, steps)
        batches = training.train_batches(dataset, config)
        training.compile_model(model, config, len(batches), lr=schedule)
        if (fast := training.fast_steps(model)) is not None:
            fast.sync_every = 1  # the recorder reads each batch's loss (on CUDA: not every 25th)
        recorder = _Recorder(steps)
        model.fit(batches.for_fit(), epochs=math.ceil(steps / len(batches)), shuffle=False, verbose=0,
                  callbacks=[recorder, training.StopWhenAsked(), training.EpochSeeds(batches, config.seed)])
    losses = np.array(recorder.losses)
    if len(losses) < 2 or not np.isfinite(losses).any():
        raise KerascnnError("the loss was not finite from the first steps; lower --start-lr")
    best = int(np.nanargmin(np.where(np.isfinite(losses), losses, np.nan)))
    return RangeTest(recorder.learning_rates, [float(v) for v in losses], recorder.learning_rates[best] / 10, config)


def write(result: RangeTest, out: Path) -> None:
    """``lr_find.json`` and ``lr_find.png`` (loss against LR, the suggestion marked) in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = result.config

    rundir.write_json(out / "lr_find.json", {"dataset": config.dataset, "model": config.model,
                                             "unfreeze": config.unfreeze, "optimizer": config.optimizer,
                                             **result.to_dict()})
    fig, axis = plt.subplots(figsize=(7, 4.5), layout="constrained")
    axis.plot(result.learning_rates, result.losses)
    axis.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggested lr {result.suggestion:.2g}")
    finite = [v for v in result.losses if math.isfinite(v)]
    axis.set_ylim(min(finite) * 0.95, min(max(finite), 3 * min(finite)))
    axis.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)",
             title=f"LR range test: {config.dataset} · {config.model} ({config.optimizer}, unfreeze {config.unfreeze})")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    fig.savefig(out / "lr_find.png", dpi=110)
    plt.close(fig)
