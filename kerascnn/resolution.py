"""`resolve`: the one step that turns the options a user gave into the run that trains (every
default decided, docs/design/resolution.md)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from kerascnn import distribute, models
from kerascnn.config import DEEP_FINETUNE_LR, DEFAULT_LR, RunConfig


@dataclass(frozen=True)
class ResolvedRun:
    """A run with every default decided. ``config`` is what ``config.json`` saves; runner,
    training and studies read it and change nothing."""

    config: RunConfig  # every option decided, with the architecture and the machine it ran on
    devices: distribute.Plan  # device count, images per step over all devices, peak LR after scaling
    fast_path: bool  # torch trains with kerascnn's fast steps (`kerascnn.torch_fast`), not Keras' own

    @property
    def training(self) -> RunConfig:
        """What training reads: ``config`` with the batch and peak LR over all of its devices."""
        if self.devices.count == 1:
            return self.config
        return dataclasses.replace(self.config, batch_size=self.devices.batch_size, lr=self.devices.lr)

    def save(self, path: Any) -> None:
        """Write ``config.json``."""
        self.config.save(path)


def cnn_options(config: RunConfig) -> dict[str, Any]:
    """The scratch-CNN architecture options of ``config`` (None: not given, the preset's value)."""
    return {name: getattr(config, name) for name in models.CNN_OPTIONS}


def resolve(config: RunConfig, environment: distribute.Environment | None = None) -> ResolvedRun:
    """Check ``config`` against the option rules and the model registry, and decide each default it
    leaves open, on ``environment`` (default: this machine); ``config`` is not changed. (Whether
    its data exists is `kerascnn.data.check`'s question.)

    The rules: ``weights`` imagenet for a pretrained model, else none; ``unfreeze`` none on
    pretrained weights, all from scratch or with ``unfreeze_at``; ``label_smoothing`` the model's;
    ``lr`` `DEEP_FINETUNE_LR` when two or more backbone stages train from the first epoch, else
    `DEFAULT_LR`; ``lr_schedule`` step with ``lr_step``, else onecycle; ``image_size`` the model's
    (None: the data's own); ``precision`` auto by `ModelSpec.auto_precision`; devices and the LR
    scaling rule by `distribute.plan`. Given values are kept, so resolving a resolved config
    changes nothing.
    """
    environment = environment or distribute.Environment.current()
    config.validate()
    spec = models.get(config.model)
    weights = config.weights or ("imagenet" if spec.pretrained else "none")
    unfreeze = config.unfreeze or ("all" if weights == "none" or config.unfreeze_at else "none")
    decided = dataclasses.replace(
        config, weights=weights, unfreeze=unfreeze,
        label_smoothing=spec.label_smoothing if config.label_smoothing is None else config.label_smoothing,
        lr_schedule=config.lr_schedule or ("step" if config.lr_step else "onecycle"),
        image_size=config.image_size or spec.image_size)
    models.check(decided.model, decided.weights, decided.unfreeze, **cnn_options(decided))
    if decided.lr is None:
        fine_tuned = weights != "none" and decided.backbone_stages_trained_at_start(spec) >= 2
        decided = dataclasses.replace(decided, lr=DEEP_FINETUNE_LR if fine_tuned else DEFAULT_LR)
    if decided.precision == "auto":
        decided = dataclasses.replace(decided, precision=spec.auto_precision(decided.image_size, environment))
    record = {"architecture": models.architecture(decided.model, decided.head_dropout, **cnn_options(decided)),
              "environment": {**environment.description, **config.environment}}  # a resumed run keeps its own
    decided = dataclasses.replace(decided, **json.loads(json.dumps(record)))  # as config.json reads back
    devices = distribute.plan(decided.devices, decided.batch_size, decided.lr, decided.lr_scaling, environment)
    return ResolvedRun(decided, devices, decided.uses_fast_path(environment.backend))
