"""Discriminative learning rates: backbone variables learn at ``backbone_lr_scale`` x the head's rate.

Keras optimizers have no parameter groups, so these are Adam, AdamW and SGD subclasses whose
per-variable update (and decoupled weight decay) scales the learning rate of every variable outside
the head (layers named ``head_*``). They go through Keras' generic per-variable update on every
backend, and are saved and loaded with the model (registered under the ``kerascnn`` package).
"""

from __future__ import annotations

import keras
from keras import ops

HEAD_PREFIX = "head_"


class _ScaledBackbone:
    """Mixin over a Keras optimizer; ``backbone_lr_scale`` multiplies non-head learning rates."""

    def __init__(self, *args, backbone_lr_scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.backbone_lr_scale = float(backbone_lr_scale)

    def build(self, variables):
        super().build(variables)
        self._in_backbone = [not v.path.startswith(HEAD_PREFIX) for v in variables]

    def _scale_of(self, variable) -> float:
        return self.backbone_lr_scale if self._in_backbone[self._get_variable_index(variable)] else 1.0

    def update_step(self, gradient, variable, learning_rate):
        scale = self._scale_of(variable)
        if scale != 1.0:
            learning_rate = ops.multiply(learning_rate, scale)
        return super().update_step(gradient, variable, learning_rate)

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return
        for variable in variables:
            if self._use_weight_decay(variable):
                rate = ops.cast(self.learning_rate, variable.dtype) * self._scale_of(variable)
                variable.assign(variable - variable * ops.cast(self.weight_decay, variable.dtype) * rate)

    def get_config(self):
        return super().get_config() | {"backbone_lr_scale": self.backbone_lr_scale}


@keras.saving.register_keras_serializable(package="kerascnn")
class DiscriminativeAdam(_ScaledBackbone, keras.optimizers.Adam):
    """Adam with the backbone's learning rate scaled by ``backbone_lr_scale``."""

    option = "adam"


@keras.saving.register_keras_serializable(package="kerascnn")
class DiscriminativeAdamW(_ScaledBackbone, keras.optimizers.AdamW):
    """AdamW with the backbone's learning rate scaled by ``backbone_lr_scale``."""

    option = "adamw"


@keras.saving.register_keras_serializable(package="kerascnn")
class DiscriminativeSGD(_ScaledBackbone, keras.optimizers.SGD):
    """SGD with the backbone's learning rate scaled by ``backbone_lr_scale``."""

    option = "sgd"


def optimizer_classes(name: str) -> tuple[type, type]:
    """The Keras optimizer of ``--optimizer name`` and its discriminative subclass (the subclass whose
    ``option`` is ``name``; `kerascnn.config.RunConfig.optimizer` lists the names)."""
    scaled = {cls.option: cls for cls in _ScaledBackbone.__subclasses__()}[name]
    return scaled.__bases__[1], scaled
