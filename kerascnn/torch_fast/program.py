"""`TorchProgram`: a Keras functional model's forward pass as a list of torch operations.

Each layer type the program runs as torch ops has one converter (`converts`, in `.converters`); any
other layer or operation runs through Keras inside the program (correct, only slower).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import torch
import torch.nn.functional as F

from kerascnn import keras_compat

Tensor = torch.Tensor
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)


class Unsupported(Exception):
    """A layer (or configuration of one) the program runs through Keras instead."""


class Value:
    """A tensor in the program: whether a 4-D one is NCHW (our ops) or NHWC (Keras' layout), a zero
    padding (left, right, top, bottom) not yet applied, which a convolution (and a max-pool over
    non-negative values) takes for free, and whether it is known to be >= 0 (after a ReLU)."""

    __slots__ = ("tensor", "nchw", "pad", "nonneg")

    def __init__(self, tensor: Tensor, nchw: bool = False, pad: tuple[int, int, int, int] | None = None,
                 nonneg: bool = False) -> None:
        self.tensor, self.nchw, self.pad, self.nonneg = tensor, nchw, pad, nonneg

    def as_nchw(self, channels_last: bool) -> Tensor:
        x = self.tensor
        if not self.nchw and x.dim() == 4:
            x = x.permute(*NHWC_TO_NCHW)  # an NHWC tensor seen as NCHW is channels-last memory
            x = x if channels_last else x.contiguous()
        return F.pad(x, self.pad) if self.pad else x

    def as_nhwc(self) -> Tensor:
        if self.pad:
            return self.as_nchw(False).permute(*NCHW_TO_NHWC)
        if not self.nchw or self.tensor.dim() != 4:
            return self.tensor
        return self.tensor.permute(*NCHW_TO_NHWC)

    def applied(self, channels_last: bool) -> Value:
        """This value with its padding applied (element-wise ops need the real zeros)."""
        return Value(self.as_nchw(channels_last), True, nonneg=self.nonneg) if self.pad else self


# A step of the program: fn(training, *input values) -> output value; ``fn.takes_padding`` marks one that
# takes its inputs' pending zero padding as it is
Step = Callable[..., Value]
# A converter: (the layer or operation, its graph node, channels_last) -> its step, or `Unsupported`
Converter = Callable[[Any, keras_compat.GraphNode, bool], Step]
CONVERTERS: dict[type, Converter] = {}


def converts(*types: type) -> Callable[[Converter], Converter]:
    """Register the decorated function as the converter of layers (or operations) of exactly ``types``."""
    def register(converter: Converter) -> Converter:
        for t in types:
            CONVERTERS[t] = converter
        return converter
    return register


def wide(x: Tensor) -> Tensor:
    """``x`` in float32 where the program widens it (input scaling, resizing, softmax); float64 values
    stay float64 (float64 images through a float64 model: the tests' exact reference)."""
    return x if x.dtype == torch.float64 else x.float()


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow/Keras "same" padding (before, after) of one spatial axis."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
             value: float = 0.0) -> Tensor:
    """NCHW ``x`` padded as a "same" window of ``kernel``, ``stride`` and ``dilation`` needs."""
    (top, bottom), (left, right) = (same_padding(x.shape[2 + i], kernel[i], stride[i], dilation[i]) for i in (0, 1))
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def one_layout(values: tuple[Value, ...], channels_last: bool) -> tuple[Value, ...]:
    """``values`` as they are when their feature maps share a layout, else all NCHW: element-wise
    arithmetic between them then lines up axis for axis as Keras' does."""
    if len({v.nchw for v in values if v.tensor.dim() == 4}) <= 1:
        return values
    return tuple(Value(v.as_nchw(channels_last), True) for v in values)


@torch.no_grad()
def relayout(param: Tensor, torch_order: tuple[int, ...], channels_last: bool = False) -> None:
    """Store ``param`` (shape unchanged) so that ``param.permute(*torch_order)`` is contiguous (or
    channels-last), the layout torch's kernels read, instead of copying it on every call. The same
    Python object keeps its values, so Keras, its optimizer and saving see no difference."""
    target = param.permute(*torch_order)
    fmt = torch.channels_last if channels_last and target.dim() == 4 else torch.contiguous_format
    if target.is_contiguous(memory_format=fmt):
        return
    inverse = tuple(torch_order.index(i) for i in range(len(torch_order)))
    param.data = target.contiguous(memory_format=fmt).permute(*inverse)


def keras_step(operation: Any, node: keras_compat.GraphNode) -> Step:
    """Run a layer, or an operation such as ``keras.ops.maximum(x, 0.5)``, as Keras' functional
    model does: the node's own arguments (constants included) filled in with our values, and
    ``training`` passed only to what takes it."""
    takes_training = keras_compat.takes_training(operation)

    def run(training: bool, *values: Value) -> Value:
        args, kwargs = node.fill_in({k: v.as_nhwc() for k, v in zip(node.inputs, values)})
        if takes_training:
            kwargs = {**kwargs, "training": training}
        return Value(operation(*args, **kwargs))
    return run


class TorchProgram:
    """The forward pass of a Keras functional ``model`` as a list of torch operations.

    Calling it with a batch of images (NHWC, any dtype) returns the output of the model's last
    layer, or with ``logits=True`` and a softmax last layer, that layer's input. ``keras_layers``
    names the layers and operations run through Keras (none in any registered model, grey input
    and resizing included)."""

    def __init__(self, model: keras.Model, *, channels_last: bool = False) -> None:
        self.channels_last = channels_last
        self.keras_layers: list[str] = []
        self._steps: list[tuple[Step, bool, list[int], list[int]]] = []  # fn, takes padding, in, out
        if not keras_compat.is_functional(model) or len(model.inputs) != 1 or len(model.outputs) != 1:
            raise Unsupported("a functional model with one input and one output")
        self._input = id(model.inputs[0])
        self._output, self.softmax_output = self._compile(model, {id(model.inputs[0]): id(model.inputs[0])})

    def _compile(self, model: keras.Model, aliases: dict[int, int]) -> tuple[int, bool]:
        """Append ``model``'s nodes (nested functional models inlined); return the output's key."""
        last_softmax = False
        for node in keras_compat.graph_nodes(model):
            layer = node.operation
            inputs = [aliases[k] for k in node.inputs]
            if keras_compat.is_functional(layer) and len(layer.inputs) == 1:
                out, last_softmax = self._compile(layer, {id(layer.inputs[0]): inputs[0]})
                aliases[node.outputs[0]] = out
                continue
            fn = self._step(layer, node)
            last_softmax = isinstance(layer, keras.layers.Activation) and layer.activation is keras.activations.softmax
            self._steps.append((fn, getattr(fn, "takes_padding", False), inputs, node.outputs))
            for key in node.outputs:
                aliases[key] = key
        return aliases[id(model.outputs[0])], last_softmax

    def _step(self, layer: Any, node: keras_compat.GraphNode) -> Step:
        converter = CONVERTERS.get(type(layer))
        try:
            if converter is None:
                raise Unsupported(type(layer).__name__)
            if getattr(layer, "data_format", "channels_last") != "channels_last":
                raise Unsupported("channels_first layers")
            return converter(layer, node, self.channels_last)
        except Unsupported:
            self.keras_layers.append(layer.name)
            return keras_step(layer, node)

    def __call__(self, images: Tensor, training: bool = False, logits: bool = False) -> Tensor:
        if not images.is_floating_point():
            images = images.float()
        values: dict[int, Value] = {self._input: Value(images)}
        for fn, takes_padding, inputs, outputs in self._steps:
            if logits and outputs[0] == self._output and self.softmax_output:
                return values[inputs[0]].as_nhwc()
            args = [values[k] for k in inputs]
            if not takes_padding:
                args = [v.applied(self.channels_last) for v in args]
            values[outputs[0]] = fn(training, *args)
        return values[self._output].as_nhwc()
