"""The one boundary to Keras' private names (``keras.src``, underscore attributes), per supported version.

kerascnn's fast torch path (`kerascnn.torch_fast`) reads a compiled model's graph, its optimizer's slots
and its metrics, which Keras exposes only through private names. They are read here and nowhere else
(``tests/test_keras_boundary.py`` fails on one elsewhere), each with the variant of every Keras version
in `FAST_PATH_KERAS`. A name this Keras lacks raises `KerasMismatch`, on which the fast path steps
aside for Keras' own training step.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import keras

# Keras versions the fast path was checked on: [low, high) as (major, minor); keras-nightly is the newest
FAST_PATH_KERAS = ((3, 10), (3, 17))


class KerasMismatch(Exception):
    """This Keras lacks, or has changed, a private name the fast path reads."""


def keras_version() -> tuple[int, int]:
    """The installed Keras' (major, minor): ``3.16.0.dev2026102704`` is (3, 16)."""
    major, minor = re.match(r"(\d+)\.(\d+)", keras.version()).groups()
    return int(major), int(minor)


def version_mismatch() -> str | None:
    """Why the installed Keras is outside `FAST_PATH_KERAS`, None when it is inside."""
    low, high = FAST_PATH_KERAS
    if low <= keras_version() < high:
        return None
    return (f"Keras {keras.version()} is outside the versions the fast path was checked on "
            f"({low[0]}.{low[1]} to {high[0]}.{high[1] - 1})")


def _read(obj: Any, name: str) -> Any:
    """``obj``'s private attribute ``name``, or `KerasMismatch` naming it."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise KerasMismatch(f"{type(obj).__name__}.{name} is missing in Keras {keras.version()}") from None


# -- the torch device -------------------------------------------------------------------------------
def torch_device_name() -> str:
    """The torch device Keras puts tensors on ("cuda" unless ``KERAS_TORCH_DEVICE`` says otherwise)."""
    try:  # Keras 3.16 moved the torch backend's core into ops/
        from keras.src.backend.torch.ops.core import get_device
    except ImportError:
        from keras.src.backend.torch.core import get_device
    return get_device()


# -- a functional model's graph ---------------------------------------------------------------------
class GraphNode(NamedTuple):
    """One call in a functional model: the operation, the keys (ids) of the symbolic tensors it takes
    and gives, its literal positional and keyword arguments, and ``fill_in``, which maps
    {input key: value} to the call's (args, kwargs) with those values in place."""

    operation: Any
    inputs: list[int]
    outputs: list[int]
    args: tuple
    kwargs: dict
    fill_in: Callable[[dict[int, Any]], tuple[tuple, dict]]


def is_functional(model: Any) -> bool:
    """Whether ``model`` is a functional graph (a `keras.Model` built from inputs and outputs)."""
    return isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")


def graph_nodes(model: keras.Model) -> Iterator[GraphNode]:
    """The calls of the functional ``model`` in execution order (input placeholders left out)."""
    by_depth = _read(model, "_nodes_by_depth")
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.is_input or isinstance(node.operation, keras.layers.InputLayer):
                continue
            keys = [id(t) for t in node.input_tensors]
            arguments = node.arguments

            def fill_in(values: dict[int, Any], arguments=arguments) -> tuple[tuple, dict]:
                args, kwargs = arguments.fill_in(values)
                return tuple(args), dict(kwargs)

            yield GraphNode(node.operation, keys, [id(t) for t in node.outputs], tuple(arguments.args),
                            dict(arguments.kwargs), fill_in)


def takes_training(operation: Any) -> bool:
    """Whether Keras passes ``training`` to ``operation``'s call (a layer; a bare operation takes none)."""
    if not isinstance(operation, keras.layers.Layer):
        return False
    return "training" in _read(operation, "_call_context_args")


def elementwise_operations() -> dict[type, Callable[[Any, Any], Any]]:
    """The classes of Keras' bare arithmetic on symbolic tensors (``x + 3.0``), with the Python operator;
    none where this Keras has moved them (they then run through Keras)."""
    try:
        from keras.src.ops import numpy as knp

        return {knp.Add: operator.add, knp.Subtract: operator.sub, knp.Multiply: operator.mul,
                knp.Divide: operator.truediv, knp.TrueDivide: operator.truediv}
    except (ImportError, AttributeError):
        return {}


def normalization_statistics(layer: keras.layers.Normalization) -> tuple[Any, Any]:
    """An adapted or configured `Normalization` layer's mean and variance tensors (None before either)."""
    return getattr(layer, "mean", None), getattr(layer, "variance", None)


# -- the optimizer ----------------------------------------------------------------------------------
def adam_slots(optimizer: keras.optimizers.Optimizer, variables: list[keras.Variable]
               ) -> tuple[list[keras.Variable], list[keras.Variable]]:
    """A built Adam/AdamW's first and second moment variables of each of ``variables``."""
    index = [_read(optimizer, "_get_variable_index")(v) for v in variables]
    momentums, velocities = _read(optimizer, "_momentums"), _read(optimizer, "_velocities")
    return [momentums[i] for i in index], [velocities[i] for i in index]


def decays_weight(optimizer: keras.optimizers.Optimizer, variable: keras.Variable) -> bool:
    """Whether ``optimizer`` applies its weight decay to ``variable``."""
    return optimizer.weight_decay is not None and _read(optimizer, "_use_weight_decay")(variable)


def learning_rate_setting(optimizer: keras.optimizers.Optimizer) -> Any:
    """What the optimizer was given as its learning rate: a schedule, or its LR variable."""
    return _read(optimizer, "_learning_rate")


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> Any:
    """The learning rate of the optimizer's next step (a tensor, or its LR variable)."""
    return _read(optimizer, "_get_current_learning_rate")()


# -- the compiled metrics ---------------------------------------------------------------------------
def build_metrics(model: keras.Model, batch: Any) -> None:
    """Build the compiled metrics of ``model`` from a data ``batch`` as ``fit`` would, once."""
    compiled = _read(model, "_compile_metrics")
    if compiled is not None and not compiled.built:
        _read(model, "_symbolic_build")(data_batch=batch)


def loss_tracker(model: keras.Model) -> keras.metrics.Metric:
    """The compiled ``model``'s running mean of the loss (the ``loss`` of its logs)."""
    return _read(model, "_loss_tracker")
