"""The fast training path on the torch backend: a Keras functional model run as plain torch ops.

Keras 3 on torch pays a large per-layer cost (signature binding, tree mapping, name scopes), composes
batch norm from element-wise ops and permutes every channels-last convolution's input to NCHW and back.
For the layers our models use, `TorchProgram` (``program``, one converter per layer type in
``converters``) runs the very same variables through ``torch.nn.functional``; `install` (``steps``)
gives a compiled Keras model train/test/predict functions built on it once it has checked that it
understands this Keras, so ``model.fit`` with its callbacks, the optimizer (`LeanAdam`, ``adam``), its
schedule and the saved ``model.keras`` stay Keras' own (docs/design/fast-path.md); the tests check
losses, gradients, weights and batch-norm statistics against Keras' own ``train_step``.
"""

from . import converters  # noqa: F401 - registers the converters
from .adam import LeanAdam, schedule_value
from .converters import dropout
from .program import TorchProgram, Unsupported, relayout
from .steps import CudaGraph, FastPath, FastSteps, categorical_crossentropy, install

__all__ = ["CudaGraph", "FastPath", "FastSteps", "LeanAdam", "TorchProgram", "Unsupported", "categorical_crossentropy",
           "dropout", "install", "relayout", "schedule_value"]
