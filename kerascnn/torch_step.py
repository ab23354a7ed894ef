"""The fast training path on the torch backend: a Keras functional model run as plain torch ops.

Keras 3 on torch pays a large per-layer cost (signature binding, tree mapping, name scopes:
keras-team/keras#22561), composes batch norm from elementwise ops and permutes every channels-last
convolution's input to NCHW and back. For the small, known set of layers our models use, `TorchProgram` runs the
very same variables through ``torch.nn.functional`` in NCHW (channels-last memory on CUDA), and
`install` gives a compiled Keras model train/test/predict functions built on it, so ``model.fit``
with its callbacks, the optimizer, its schedule and the saved ``model.keras`` stay Keras' own. Layers
it does not know run as Keras layers inside the program (correct, only slower).

Training semantics are Keras': batch norm updates its moving statistics with the biased batch
variance and Keras' momentum, frozen batch norm runs in inference mode, the loss is categorical
cross-entropy on clipped probabilities with label smoothing and sample weights averaged over the
batch, and the optimizer is the compiled Keras optimizer (a plain Adam/AdamW applied by `LeanAdam`
as torch's fused Adam kernel). On CUDA the training step is captured once as a CUDA graph and
replayed (`FastSteps`). `tests/test_torch_step.py` checks losses, gradients, weights and batch-norm
statistics against Keras' own ``train_step``, the replayed steps too (on a CPU through a stand-in with
a CUDA graph's semantics).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import operator
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

import keras
import torch
import torch.nn.functional as F
from keras import layers
from keras.src.ops import numpy as knp  # the operation classes of bare arithmetic on Keras tensors

Tensor = torch.Tensor
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)
EPSILON = 1e-7  # keras.backend.epsilon(): Keras' cross-entropy clips probabilities to [eps, 1 - eps]


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


def _variable(v: keras.Variable | None) -> Tensor | None:
    return None if v is None else v.value


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow/Keras "same" padding (before, after) of one spatial axis."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
              value: float = 0.0) -> Tensor:
    (top, bottom), (left, right) = (_same_padding(x.shape[2 + i], kernel[i], stride[i], dilation[i]) for i in (0, 1))
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


ACTIVATIONS: dict[Any, Callable[[Tensor], Tensor]] = {
    keras.activations.linear: lambda x: x,
    keras.activations.relu: F.relu,
    keras.activations.relu6: F.relu6,
    keras.activations.sigmoid: torch.sigmoid,
    keras.activations.tanh: torch.tanh,
    keras.activations.silu: F.silu,
    keras.activations.hard_sigmoid: F.hardsigmoid,
    keras.activations.hard_silu: F.hardswish,
}


def _wide(x: Tensor) -> Tensor:
    """``x`` in float32 where the program widens it (input scaling, resizing, softmax); float64 values
    stay float64 (float64 images through a float64 model: the tests' exact reference)."""
    return x if x.dtype == torch.float64 else x.float()


def _activation(fn: Any) -> Callable[[Tensor], Tensor] | None:
    """The torch function of an element-wise Keras activation, None when we do not know it."""
    return ACTIVATIONS.get(fn)


def dropout(x: Tensor, rate: float, noise_shape: tuple[int, ...] | None = None) -> Tensor:
    """Keras' ``Dropout``: zero each element (or each slice of ``noise_shape``, which broadcasts
    against ``x``: (n, 1, 1, 1) drops whole samples) with probability ``rate``, scale the rest by
    ``1 / (1 - rate)``. On the CPU the element-wise keep mask comes from 16-bit slices of 32-bit
    random integers (the rate rounded to 1/65536), three times faster than ``F.dropout``'s draw. The
    scale multiplies each kept value at full precision (a bfloat16 scale would bias them all)."""
    if rate >= 1.0:
        return torch.zeros_like(x)
    if noise_shape is not None:
        keep = torch.rand(noise_shape, device=x.device) >= rate
    elif x.is_cuda:
        return F.dropout(x, rate, True)
    else:
        n = x.numel()
        bits = torch.randint(-(2**31), 2**31 - 1, ((n + 1) // 2,), dtype=torch.int32).view(torch.int16)[:n]
        keep = bits.view(x.shape) >= round(rate * 65536) - 32768
    return (x * keep.to(x.dtype)).mul_(1.0 / (1.0 - rate))


CONV_KERNEL = (3, 2, 0, 1)  # Keras (h, w, in, out) -> torch (out, in, h, w)
DEPTHWISE_KERNEL = (2, 3, 0, 1)  # Keras (h, w, in, multiplier) -> (in, multiplier, h, w)


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


# Keras operations (not layers) the program runs as torch functions: ``x + 3.0`` and the like
ELEMENTWISE_OPS: dict[type, Callable[[Any, Any], Tensor]] = {
    knp.Add: operator.add, knp.Subtract: operator.sub, knp.Multiply: operator.mul,
    knp.Divide: operator.truediv, knp.TrueDivide: operator.truediv,
}


class Unsupported(Exception):
    """A layer (or configuration of one) the program runs through Keras instead."""


def _one_layout(values: tuple[Value, ...], channels_last: bool) -> tuple[Value, ...]:
    """``values`` as they are when their feature maps share a layout, else all NCHW: element-wise
    arithmetic between them then lines up axis for axis as Keras' does."""
    if len({v.nchw for v in values if v.tensor.dim() == 4}) <= 1:
        return values
    return tuple(Value(v.as_nchw(channels_last), True) for v in values)


class _ChannelConstants:
    """Numbers and per-channel vectors (`Rescaling`, `Normalization`), copied to each device once
    rather than every step, and shaped for a value's layout (a vector broadcasts over the channels)."""

    def __init__(self, *constants: float | Tensor) -> None:
        self._constants = constants
        self._by_device: dict[torch.device, tuple[float | Tensor, ...]] = {}

    def for_value(self, x: Tensor, nchw: bool) -> tuple[float | Tensor, ...]:
        if x.device not in self._by_device:
            self._by_device[x.device] = tuple(c.to(x.device) if torch.is_tensor(c) else c for c in self._constants)
        shape = (1, -1, 1, 1) if nchw and x.dim() == 4 else (-1,)
        return tuple(c.view(shape) if torch.is_tensor(c) else c for c in self._by_device[x.device])


def _channel_constant(value: Any) -> float | Tensor:
    """A `Rescaling` scale or offset: a number, or one per channel (Keras broadcasts those over the
    last axis)."""
    if isinstance(value, (int, float)):
        return float(value)
    try:
        tensor = torch.tensor(value, dtype=torch.float32)
    except (TypeError, ValueError) as exc:
        raise Unsupported("rescaling by something other than numbers") from exc
    if tensor.dim() != 1:
        raise Unsupported("rescaling by a constant of rank other than 1")
    return tensor


class TorchProgram:
    """The forward pass of a Keras functional ``model`` as a list of torch operations.

    Calling it with a batch of images (NHWC, any dtype) returns the output of the model's last
    layer, or with ``logits=True`` and a softmax last layer, that layer's input. ``keras_layers``
    names the layers and operations run through Keras (none in any registered model, grey input
    and resizing included)."""

    def __init__(self, model: keras.Model, *, channels_last: bool = False) -> None:
        self.channels_last = channels_last
        self.keras_layers: list[str] = []
        self._steps: list[tuple[Callable[..., Value], bool, list[int], list[int]]] = []  # fn, takes padding, in, out
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise Unsupported("one input and one output")
        self._input = id(model.inputs[0])
        self._output, self.softmax_output = self._compile(model, {id(model.inputs[0]): id(model.inputs[0])})

    # -- building ---------------------------------------------------------------------------------
    def _compile(self, model: keras.Model, aliases: dict[int, int]) -> tuple[int, bool]:
        """Append ``model``'s nodes (nested functional models inlined); return the output's key."""
        last_softmax = False
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                layer = node.operation
                if node.is_input or isinstance(layer, layers.InputLayer):
                    continue
                inputs = [aliases[id(t)] for t in node.input_tensors]
                outputs = [id(t) for t in node.outputs]
                if isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth") and len(layer.inputs) == 1:
                    inner = {id(layer.inputs[0]): inputs[0]}
                    out, last_softmax = self._compile(layer, inner)
                    aliases[outputs[0]] = out
                    continue
                fn = self._op(layer, node)
                last_softmax = isinstance(layer, layers.Activation) and layer.activation is keras.activations.softmax
                self._steps.append((fn, getattr(fn, "takes_padding", False), inputs, outputs))
                for key in outputs:
                    aliases[key] = key
        return aliases[id(model.outputs[0])], last_softmax

    def _op(self, layer: layers.Layer, node: Any) -> Callable[..., Value]:
        try:
            if type(layer) in ELEMENTWISE_OPS:
                return self._elementwise(layer, node)
            return self._torch_op(layer)
        except Unsupported:
            self.keras_layers.append(layer.name)
            return self._keras_op(layer, node)

    @staticmethod
    def _keras_op(operation: Any, node: Any) -> Callable[..., Value]:
        """Run a layer, or an operation such as ``keras.ops.maximum(x, 0.5)``, as Keras' functional
        model does: the node's own arguments (constants included) filled in with our
        values, and ``training`` passed only to what takes it."""
        keys = [id(t) for t in node.input_tensors]
        takes_training = "training" in getattr(operation, "_call_context_args", ())

        def run(training: bool, *values: Value) -> Value:
            args, kwargs = node.arguments.fill_in({k: v.as_nhwc() for k, v in zip(keys, values)})
            if takes_training:
                kwargs = {**kwargs, "training": training}
            return Value(operation(*args, **kwargs))
        return run

    def _elementwise(self, operation: Any, node: Any) -> Callable[..., Value]:
        """A bare ``x + 3.0`` or ``x * (1 / 6)`` (MobileNetV3's hard sigmoid), tensors of one rank: they stay
        in their layout when they share it (or one meets constants), else meet in NCHW."""
        combine = ELEMENTWISE_OPS[type(operation)]
        if node.arguments.kwargs or len(node.arguments.args) != 2:
            raise Unsupported("element-wise operation with other arguments")
        if len({len(t.shape) for t in node.input_tensors}) > 1:
            raise Unsupported("broadcasting across ranks")  # Keras aligns NHWC's last axes
        keys = [id(t) for t in node.input_tensors]
        slots: list[int | float] = []  # an index into the inputs, or a constant
        for arg in node.arguments.args:
            if isinstance(arg, keras.KerasTensor):
                slots.append(keys.index(id(arg)))
            elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
                slots.append(float(arg))
            else:
                raise Unsupported("element-wise operation with a constant that is not a Python number")
        cl = self.channels_last

        def elementwise(training: bool, *values: Value) -> Value:
            tensors = [values[i] if isinstance(i, int) else None for i in slots]
            given = _one_layout(tuple(v for v in tensors if v is not None), cl)
            it = iter(given)
            args = [next(it).tensor if i is not None else c for i, c in zip(tensors, slots)]
            return Value(combine(*args), given[0].nchw)
        return elementwise

    def _torch_op(self, layer: layers.Layer) -> Callable[..., Value]:  # noqa: C901 - one table
        cl = self.channels_last
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise Unsupported("channels_first layers")
        if isinstance(layer, layers.DepthwiseConv2D):
            kernel, bias = layer.kernel.value, _variable(layer.bias)
            act = _activation(layer.activation)
            if act is None:
                raise Unsupported(layer.activation)
            kh, kw, cin, mult = kernel.shape
            relayout(kernel, DEPTHWISE_KERNEL)
            k, s, d = (kh, kw), tuple(layer.strides), tuple(layer.dilation_rate)
            same = layer.padding == "same"
            # stride 1: torch pads inside the convolution; strided "same" may pad one side more, which
            # conv2d cannot, so _pad_same pads a copy
            padding: str | int = "same" if same and s == (1, 1) else 0

            def depthwise(training: bool, v: Value) -> Value:
                x = v.as_nchw(cl)
                if same and padding == 0:
                    x = _pad_same(x, k, s, d)
                w = kernel.permute(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
                return Value(act(F.conv2d(x, w, bias, s, padding, d, cin)), True)
            return depthwise
        if type(layer) is layers.Conv2D:
            kernel, bias = layer.kernel.value, _variable(layer.bias)
            act = _activation(layer.activation)
            if act is None:
                raise Unsupported(layer.activation)
            k, s, d = tuple(kernel.shape[:2]), tuple(layer.strides), tuple(layer.dilation_rate)
            groups, same = layer.groups, layer.padding == "same"
            stride_one = s == (1, 1)
            nonneg = layer.activation in (keras.activations.relu, keras.activations.relu6)
            relayout(kernel, CONV_KERNEL, channels_last=cl)

            def conv(training: bool, v: Value) -> Value:
                w, b = kernel.permute(3, 2, 0, 1), bias
                pad = v.pad
                if pad and not same and pad[0] == pad[1] and pad[2] == pad[3]:  # ZeroPadding2D + valid conv
                    x = Value(v.tensor, v.nchw).as_nchw(cl)
                    return Value(act(F.conv2d(x, w, b, s, (pad[2], pad[0]), d, groups)), True, nonneg=nonneg)
                x = v.as_nchw(cl)
                if same and stride_one:
                    y = F.conv2d(x, w, b, 1, "same", d, groups)
                else:
                    y = F.conv2d(_pad_same(x, k, s, d) if same else x, w, b, s, 0, d, groups)
                return Value(act(y), True, nonneg=nonneg)
            conv.takes_padding = True
            return conv
        if type(layer) is layers.BatchNormalization:
            return self._batch_norm(layer)
        if type(layer) is layers.Dense:
            kernel, bias = layer.kernel.value, _variable(layer.bias)
            act = _activation(layer.activation)
            if act is None or getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
                raise Unsupported("dense variant")

            def dense(training: bool, v: Value) -> Value:
                x = v.as_nhwc()
                return Value(act(F.linear(x, kernel.t(), bias)))
            return dense
        if type(layer) is layers.Activation:
            if layer.activation is keras.activations.softmax:
                return lambda training, v: Value(torch.softmax(_wide(v.as_nhwc()), dim=-1))
            act = _activation(layer.activation)
            if act is None:
                raise Unsupported(layer.activation)
            nonneg = layer.activation in (keras.activations.relu, keras.activations.relu6)
            return lambda training, v: Value(act(v.tensor), v.nchw, nonneg=nonneg)
        if type(layer) is layers.ReLU:
            if layer.negative_slope or layer.threshold:
                raise Unsupported("ReLU with slope or threshold")
            if layer.max_value is None:
                return lambda training, v: Value(F.relu(v.tensor), v.nchw, nonneg=True)
            top = float(layer.max_value)
            return lambda training, v: Value(F.hardtanh(v.tensor, 0.0, top), v.nchw, nonneg=True)
        if type(layer) is layers.LeakyReLU:
            slope = float(layer.negative_slope)
            return lambda training, v: Value(F.leaky_relu(v.tensor, slope), v.nchw)
        if type(layer) in (layers.MaxPooling2D, layers.AveragePooling2D):
            size, stride = tuple(layer.pool_size), tuple(layer.strides)
            if type(layer) is layers.AveragePooling2D:
                if layer.padding == "same":
                    raise Unsupported("same-padded average pooling")
                return lambda training, v: Value(F.avg_pool2d(v.as_nchw(cl), size, stride), True)
            same = layer.padding == "same"

            def max_pool(training: bool, v: Value) -> Value:
                pad = v.pad
                if pad and not same and v.nonneg and pad[0] == pad[1] and pad[2] == pad[3] \
                        and 2 * max(pad) <= min(size):  # zero padding of values >= 0 is -inf padding
                    x = Value(v.tensor, v.nchw).as_nchw(cl)
                    return Value(F.max_pool2d(x, size, stride, (pad[2], pad[0])), True, nonneg=True)
                x = v.as_nchw(cl)
                x = _pad_same(x, size, stride, (1, 1), -math.inf) if same else x
                return Value(F.max_pool2d(x, size, stride), True, nonneg=v.nonneg)
            max_pool.takes_padding = True
            return max_pool
        if type(layer) is layers.GlobalAveragePooling2D:
            keep = layer.keepdims
            return lambda training, v: Value(v.as_nchw(cl).mean((2, 3), keepdim=keep), keep)
        if type(layer) is layers.GlobalMaxPooling2D:
            keep = layer.keepdims
            return lambda training, v: Value(v.as_nchw(cl).amax((2, 3), keepdim=keep), keep)
        if type(layer) is layers.ZeroPadding2D:
            (top, bottom), (left, right) = layer.padding

            def zero_pad(training: bool, v: Value) -> Value:
                v = v.applied(cl)
                return Value(v.tensor, v.nchw, (left, right, top, bottom), v.nonneg)
            zero_pad.takes_padding = True
            return zero_pad
        if type(layer) is layers.Dropout:
            rate, noise = float(layer.rate), layer.noise_shape

            def drop(training: bool, v: Value) -> Value:
                if not (training and rate):
                    return v
                if noise is None:
                    return Value(dropout(v.tensor, rate), v.nchw, nonneg=v.nonneg)
                x = v.as_nhwc()  # Keras' rule: None takes the input's size, then the mask broadcasts
                shape = tuple(x.shape[i] if d is None else d for i, d in enumerate(noise))
                if v.nchw and len(shape) == 4:  # the same mask, drawn in the program's layout
                    return Value(dropout(v.tensor, rate, tuple(shape[i] for i in NHWC_TO_NCHW)), True,
                                 nonneg=v.nonneg)
                return Value(dropout(x, rate, shape), nonneg=v.nonneg)
            return drop
        if type(layer) is layers.Reshape:  # EfficientNet's squeeze-excite: (n, c) -> (n, 1, 1, c)
            target = tuple(layer.target_shape)
            return lambda training, v: Value(v.as_nhwc().reshape(v.tensor.shape[0], *target))
        if type(layer) is layers.Flatten:
            return lambda training, v: Value(v.as_nhwc().flatten(1))
        if type(layer) in (layers.Add, layers.Multiply):
            combine = torch.add if type(layer) is layers.Add else torch.mul

            def merge(training: bool, *values: Value) -> Value:
                values = _one_layout(values, cl)
                out = values[0].tensor
                for v in values[1:]:
                    out = combine(out, v.tensor)
                return Value(out, values[0].nchw)
            return merge
        if type(layer) is layers.Concatenate:  # grey_to_rgb: one channel three times
            if layer.axis not in (-1, 3):
                raise Unsupported("concatenation off the channel axis")
            axis = layer.axis

            def concatenate(training: bool, *values: Value) -> Value:
                four_d = values[0].tensor.dim() == 4  # channels: dim 1 in NCHW; other ranks keep Keras' layout
                return Value(torch.cat([v.as_nchw(cl) for v in values], 1 if four_d else axis), four_d)
            return concatenate
        if type(layer) is layers.Resizing:  # what keras.src.backend.torch.image.resize runs for these settings
            if layer.interpolation != "bilinear" or layer.antialias or layer.crop_to_aspect_ratio \
                    or layer.pad_to_aspect_ratio:
                raise Unsupported("resizing other than plain bilinear")
            size = (layer.height, layer.width)
            return lambda training, v: Value(F.interpolate(_wide(v.as_nchw(cl)), size=size, mode="bilinear",
                                                           align_corners=False), True)
        if type(layer) is layers.Rescaling:  # EfficientNet's ImageNet input takes one scale per channel
            constants = _ChannelConstants(_channel_constant(layer.scale), _channel_constant(layer.offset))

            def rescale(training: bool, v: Value) -> Value:
                x = _wide(v.tensor)
                scale, offset = constants.for_value(x, v.nchw)
                return Value(x * scale + offset, v.nchw)
            return rescale
        if type(layer) is layers.Normalization:
            if layer.invert or layer.axis != (-1,) and layer.axis != (3,):
                raise Unsupported("normalization axis")
            mean = layer.mean.detach().float().reshape(-1) if torch.is_tensor(layer.mean) else None
            variance = layer.variance.detach().float().reshape(-1) if torch.is_tensor(layer.variance) else None
            if mean is None or variance is None:
                raise Unsupported("unadapted normalization")
            stats = _ChannelConstants(mean, torch.clamp(torch.sqrt(variance), min=keras.backend.epsilon()))

            def normalize(training: bool, v: Value) -> Value:
                x = _wide(v.tensor)
                m, std = stats.for_value(x, v.nchw)
                return Value((x - m) / std, v.nchw)
            return normalize
        raise Unsupported(type(layer).__name__)

    def _batch_norm(self, layer: layers.BatchNormalization) -> Callable[..., Value]:
        if layer.renorm or getattr(layer, "synchronized", False):
            raise Unsupported("batch renormalization")
        axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
        ndim = len(layer.input.shape) if hasattr(layer, "input") else 4
        if ndim not in (2, 4) or axis not in (-1, ndim - 1):
            raise Unsupported("batch norm other than over the channels of 2-D or 4-D inputs")
        gamma, beta = _variable(layer.gamma), _variable(layer.beta)
        moving_mean, moving_var = layer.moving_mean.value, layer.moving_variance.value
        momentum, eps, train = float(layer.momentum), float(layer.epsilon), layer.trainable
        cl = self.channels_last

        def batch_norm(training: bool, v: Value) -> Value:
            # bfloat16/float16 input with float32 statistics and parameters goes in as it is on CPU and
            # CUDA (torch's mixed-dtype kernels accumulate in float32, as Keras normalises in float32)
            x = v.as_nchw(cl) if v.tensor.dim() == 4 else v.tensor
            dtype = x.dtype
            if x.device.type not in ("cpu", "cuda"):
                x = x.float()
            if training and train:
                y, mean, invstd = torch.native_batch_norm(x, gamma, beta, None, None, True, 0.0, eps)
                with torch.no_grad():  # Keras' update: the biased batch variance, Keras' momentum
                    moving_mean.mul_(momentum).add_(mean, alpha=1.0 - momentum)
                    moving_var.mul_(momentum).add_(invstd.pow(-2).sub_(eps), alpha=1.0 - momentum)
            else:
                y = F.batch_norm(x, moving_mean, moving_var, gamma, beta, False, 0.0, eps)
            return Value(y.to(dtype), x.dim() == 4)
        return batch_norm

    # -- running ----------------------------------------------------------------------------------
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


def categorical_crossentropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0,
                             sample_weight: Tensor | None = None) -> Tensor:
    """Keras' `CategoricalCrossentropy` on ``softmax(logits)``: probabilities clipped to
    [1e-7, 1 - 1e-7], smoothed one-hot ``targets``, sample weights summed over the batch size."""
    log_p = torch.log_softmax(logits.float(), dim=-1).clamp(math.log(EPSILON), math.log1p(-EPSILON))
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / targets.shape[-1]
    per_sample = -(targets * log_p).sum(-1)
    if sample_weight is not None:
        per_sample = per_sample * sample_weight
    return per_sample.sum() / per_sample.shape[0]


def schedule_value(schedule: object, step: int) -> float | None:
    """``schedule(step)`` in Python arithmetic for the Keras schedules kerascnn builds (`CosineDecay`,
    with or without warm-up, and `ExponentialDecay`; Keras' formulas, clamps included), None for any
    other. Keras evaluates a schedule with a dozen tensor operations per step, on the host about as
    long as a small model's whole step on a GPU (`benchmarks/framework_tax.py --batch-size 2`)."""
    schedules = keras.optimizers.schedules
    if type(schedule) is schedules.ExponentialDecay:
        p = step / schedule.decay_steps
        return schedule.initial_learning_rate * schedule.decay_rate ** (math.floor(p) if schedule.staircase else p)
    if type(schedule) is not schedules.CosineDecay:
        return None
    start, decay_steps, warmup_steps = schedule.initial_learning_rate, schedule.decay_steps, 0
    if schedule.warmup_target is not None:
        warmup_steps = schedule.warmup_steps
        step = min(step, decay_steps + warmup_steps)
        if step < warmup_steps:
            return (schedule.warmup_target - start) * (step / warmup_steps) + start
        start = schedule.warmup_target
    fraction = min(step - warmup_steps, decay_steps) / decay_steps
    return start * ((1 - schedule.alpha) * 0.5 * (1 + math.cos(math.pi * fraction)) + schedule.alpha)


class LeanAdam:
    """Keras' Adam/AdamW update as torch's fused Adam kernel (one pass over memory, on CPU and CUDA)
    instead of Keras' dozen element-wise operations per variable.

    Exactly Keras' arithmetic (up to float rounding): decoupled weight decay ``p *= 1 - wd * lr``
    on the variables Keras decays, ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``, then ``iterations += 1``; the
    state lives in the Keras optimizer's own variables (stored in the layout of their weights).
    The step count ``t`` is also kept on the host (`step`, read from ``iterations`` once per ``fit``
    by `FastSteps.make_train_function`), so the learning rate of a schedule `schedule_value` knows
    is a Python number: no tensor work for it and no host synchronisation.
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer, variables: list[keras.Variable]) -> None:
        if not optimizer.built:
            optimizer.build(variables)
        self.optimizer = optimizer
        index = [optimizer._get_variable_index(v) for v in variables]
        params = [v.value for v in variables]
        momentums = [optimizer._momentums[i].value for i in index]
        velocities = [optimizer._velocities[i].value for i in index]
        with torch.no_grad():
            for p, m, v in zip(params, momentums, velocities):
                if m.stride() != p.stride():  # the weight's layout (see `relayout`)
                    m.data, v.data = torch.empty_like(p).copy_(m), torch.empty_like(p).copy_(v)
        # Flat views in each weight's memory order: element-wise updates on contiguous vectors.
        self.orders = [sorted(range(p.dim()), key=lambda d, p=p: -p.stride(d)) for p in params]
        if not all(p.permute(*o).is_contiguous() for p, o in zip(params, self.orders)):
            raise Unsupported("weights with overlapping or gapped memory")
        self.params, self.momentums, self.velocities = ([_flat(x, o) for x, o in zip(xs, self.orders)]
                                                        for xs in (params, momentums, velocities))
        self.decayed = [optimizer.weight_decay is not None and optimizer._use_weight_decay(v) for v in variables]
        device = self.params[0].device if self.params else torch.device("cpu")
        self.cpu = device.type == "cpu"
        self.step: int | None = None  # ``iterations`` on the host; None: read it at the next update
        self._t = torch.zeros((), dtype=torch.float32, device=device)  # t, for the kernel
        # a captured step's per-step numbers (`next_graphed_step`): the step size and the decay factor
        self._alpha = torch.zeros((), dtype=torch.float32, device=device)
        self._decay_factor = torch.ones((), dtype=torch.float32, device=device)

    @classmethod
    def for_optimizer(cls, optimizer: keras.optimizers.Optimizer, variables: list[keras.Variable]) -> LeanAdam | None:
        """A `LeanAdam` for a plain Keras Adam or AdamW, None for anything it would not reproduce."""
        plain = isinstance(optimizer, keras.optimizers.Adam) and type(optimizer).__module__.startswith("keras.")
        extras = (optimizer.amsgrad if plain else True, optimizer.clipnorm, optimizer.clipvalue,
                  optimizer.global_clipnorm, optimizer.use_ema, optimizer.gradient_accumulation_steps)
        if not plain or any(extras) or not variables:
            return None
        try:
            return cls(optimizer, variables)
        except Unsupported:
            return None

    def learning_rate(self) -> float | Tensor:
        """This step's learning rate: a Python number where it is one without a host
        synchronisation (a known schedule, or any LR on the CPU), else Keras' tensor."""
        opt = self.optimizer
        lr = schedule_value(opt._learning_rate, self.step)
        if lr is None:
            lr = opt._get_current_learning_rate()  # a tensor, or the optimizer's LR variable
            lr = float(lr) if self.cpu else getattr(lr, "value", lr)
        return lr

    def _next_step(self) -> tuple[int, float | Tensor]:
        """The step number ``t`` about to be taken (counted on the host from now on) and its learning rate."""
        if self.step is None:
            self.step = int(self.optimizer.iterations.value)
        lr = self.learning_rate()
        self.step += 1
        return self.step, lr

    def _selected(self, grads: tuple[Tensor | None, ...]) -> tuple[list[Tensor], ...]:
        """The flat parameters, moments, velocities and gradients of the variables that have a
        gradient, and those of the parameters to decay."""
        kept = [i for i, g in enumerate(grads) if g is not None]
        params, momentums, velocities = ([xs[i] for i in kept] for xs in (self.params, self.momentums,
                                                                           self.velocities))
        flat = [_flat(grads[i], self.orders[i]) for i in kept]
        return params, momentums, velocities, flat, [self.params[i] for i in kept if self.decayed[i]]

    @torch.no_grad()
    def apply(self, grads: tuple[Tensor | None, ...]) -> None:
        opt = self.optimizer
        t, lr = self._next_step()
        params, momentums, velocities, grads, decayed = self._selected(grads)
        if decayed:
            torch._foreach_mul_(decayed, 1 - opt.weight_decay * lr)
        # torch's kernel divides by sqrt(v) / sqrt(1 - b2^t) + eps where Keras divides by sqrt(v) + eps
        # and scales the step by sqrt(1 - b2^t): the same arithmetic with eps / sqrt(1 - b2^t)
        self._t.fill_(t)
        torch._fused_adam_(params, grads, momentums, velocities, [], [self._t] * len(params), lr=lr,
                           beta1=opt.beta_1, beta2=opt.beta_2, weight_decay=0.0,
                           eps=opt.epsilon / math.sqrt(1 - opt.beta_2 ** t), amsgrad=False, maximize=False)
        opt.iterations.value.add_(1)

    def next_graphed_step(self) -> None:
        """Before a replay of a captured step (`graphed_apply`): write this step's numbers where the
        capture reads them. A captured step keeps every host number it was captured with, so what
        changes from step to step (the learning rate, the bias corrections) lives in device tensors,
        set here by kernel arguments: no host synchronisation."""
        opt = self.optimizer
        t, lr = self._next_step()
        self._alpha.fill_(lr * (math.sqrt(1 - opt.beta_2 ** t) / (1 - opt.beta_1 ** t)))
        self._decay_factor.fill_(1 - (opt.weight_decay or 0.0) * lr)

    @torch.no_grad()
    def graphed_apply(self, grads: tuple[Tensor | None, ...]) -> None:
        """`apply`'s update for a captured step, Keras' arithmetic as written (``p -= alpha m /
        (sqrt(v) + eps)``) in element-wise operations over the whole list: torch's fused kernel takes
        eps as a host number, and Keras' arithmetic through it needs eps / sqrt(1 - b2^t), which
        changes every step. Inside a CUDA graph the extra kernels cost no launches."""
        opt = self.optimizer
        params, momentums, velocities, grads, decayed = self._selected(grads)
        if decayed:
            torch._foreach_mul_(decayed, self._decay_factor)
        torch._foreach_lerp_(momentums, grads, 1 - opt.beta_1)
        torch._foreach_mul_(velocities, opt.beta_2)
        torch._foreach_addcmul_(velocities, grads, grads, value=1 - opt.beta_2)
        denominators = torch._foreach_sqrt(velocities)
        torch._foreach_add_(denominators, opt.epsilon)
        updates = torch._foreach_div(momentums, denominators)
        torch._foreach_mul_(updates, self._alpha)
        torch._foreach_sub_(params, updates)
        opt.iterations.value.add_(1)


def _flat(x: Tensor, order: list[int]) -> Tensor:
    """``x`` as a vector in the memory order ``order`` (a view when ``x`` is laid out that way)."""
    return x.permute(*order).reshape(-1)


def _metric(model: keras.Model, cls: type) -> keras.metrics.Metric | None:
    """The compiled metric of class ``cls`` (the loss tracker is ``model._loss_tracker``)."""
    for metric in model.metrics:
        for m in getattr(metric, "metrics", [metric]):
            if type(m) is cls:
                return m
    return None


class StepGraph(Protocol):
    """A training step captured once (constructed from the step, a function of no arguments, and the
    stream to capture on) and replayed on the same tensors; ``runs_on_capture``: capturing also ran it."""

    runs_on_capture: bool

    def replay(self) -> None: ...


class CudaGraph:
    """``step`` (a function of no arguments) captured as a CUDA graph on ``stream``: `replay` launches
    its kernels again, on the same memory, with the host numbers they were captured with. Capturing
    runs nothing."""

    runs_on_capture = False

    def __init__(self, step: Callable[[], None], stream: torch.cuda.Stream | None) -> None:
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the input pipeline's threads may use the GPU meanwhile (augmentation)
        with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
            step()

    def replay(self) -> None:
        self.graph.replay()


class CapturedStep(NamedTuple):
    """The captured training step: the batch shapes it takes, the graph and the inputs it reads."""

    key: tuple
    graph: StepGraph
    inputs: list[Tensor | None]


class FastSteps:
    """Train, test and predict functions for a compiled Keras ``model`` on top of `TorchProgram`.

    They update the same Keras objects as Keras' own steps (weights, batch-norm statistics, the
    optimizer and its iteration count, the loss tracker and accuracy metric), so callbacks, history
    and saving are unchanged. On CUDA the logs handed to callbacks are read back every
    ``sync_every`` steps instead of every step, and at the first step after the metrics are reset
    (the epoch's logs are always exact); set ``sync_every`` to 1 where each batch's loss counts.

    On CUDA, with a plain Adam or AdamW (`LeanAdam`), no Keras layer left in the program and
    without ``jit``, the training step of the first batch shape to have run `GRAPH_AFTER` times is
    captured as a CUDA graph and replayed for every later batch of that shape: one launch instead of
    about two hundred, which is what a small network's step costs on a fast GPU (the issue measured 3.3
    ms for plain PyTorch's eager step of the default ``cnn``). Other shapes (an epoch's last, smaller
    batch; a later ``fit`` at another batch size) run eagerly. The graph keeps the memory of one
    step's activations for itself, beside what eager steps and evaluation use. A step that cannot be
    captured runs eagerly, with a warning.
    """

    SYNC_EVERY = {"cuda": 25}  # by device type; 1 elsewhere
    CHANNELS_LAST = {"cuda": True}  # by device type: the memory layout of feature maps (NCHW elsewhere)
    GRAPHS: dict[str, type[StepGraph]] = {"cuda": CudaGraph}  # by device type: what captures the step (else eager)
    GRAPH_AFTER = 3  # eager steps of a batch shape before it is captured (CUDA graphs want a warm-up)

    def __init__(self, model: keras.Model, *, jit: bool = False, sync_every: int | None = None) -> None:
        loss = model.loss
        if not isinstance(loss, keras.losses.CategoricalCrossentropy) or loss.from_logits:
            raise Unsupported("the loss must be CategoricalCrossentropy on probabilities")
        if model.losses:
            raise Unsupported("models with regularisation losses")
        self.model = model
        self.variables = list(model.trainable_variables)
        self.params = [v.value for v in self.variables]
        self.device = next(iter(self.params or [w.value for w in model.weights])).device
        self.program = TorchProgram(model, channels_last=self.CHANNELS_LAST.get(self.device.type, False))
        if not self.program.softmax_output:
            raise Unsupported("the model must end in a softmax activation")
        self.label_smoothing = float(loss.label_smoothing or 0.0)
        compute = keras.backend.standardize_dtype(model.dtype_policy.compute_dtype)
        self.autocast = getattr(torch, compute) if compute in ("bfloat16", "float16") else None
        self.sync_every = sync_every or self.SYNC_EVERY.get(self.device.type, 1)
        self._forward = torch.compile(self._forward_loss) if jit else self._forward_loss
        self._adam = LeanAdam.for_optimizer(model.optimizer, self.variables)
        graph = self.GRAPHS.get(self.device.type)
        # Keras layers in the program copy constants to the device and read seeds on the host
        capturable = self._adam is not None and not jit and not self.program.keras_layers
        self._graph_class = graph if capturable else None
        self._graph: CapturedStep | None = None
        self._warmups: dict[tuple, int] = {}  # by batch key, before the capture
        self._stream = torch.cuda.Stream(self.device) if self._graph_class and self.device.type == "cuda" else None
        self._logs: dict[str, Any] = {}
        self._steps = 0
        self._tracked: tuple[keras.metrics.Metric, keras.metrics.Metric] | None = None

    def _metrics(self, data) -> tuple[keras.metrics.Metric, keras.metrics.Metric]:
        """The loss tracker and accuracy metric, built from ``data`` as ``fit`` would (once)."""
        if self._tracked is None:
            if self.model._compile_metrics is not None and not self.model._compile_metrics.built:
                self.model._symbolic_build(data_batch=data[0])
            accuracy = _metric(self.model, keras.metrics.CategoricalAccuracy)
            if accuracy is None or len(self.model.metrics) != 2:
                raise RuntimeError("kerascnn's fast steps track loss and accuracy only; compile with jit=False")
            self._tracked = (self.model._loss_tracker, accuracy)
        return self._tracked

    def _batch(self, data) -> tuple[Tensor, Tensor, Tensor | None]:
        batch = data[0]
        x, y, weights = (tuple(batch) + (None,))[:3] if isinstance(batch, (tuple, list)) else (batch, None, None)
        to = lambda t: None if t is None else torch.as_tensor(t).to(self.device, non_blocking=True)  # noqa: E731
        y = to(y)
        return to(x), y.float() if y is not None else None, None if weights is None else to(weights).float()

    def _forward_loss(self, x: Tensor, y: Tensor, weights: Tensor | None, training: bool) -> tuple[Tensor, Tensor]:
        # a captured step must cast the weights it reads afresh at every replay: no cast cache
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None,
                            cache_enabled=self._graph_class is None):
            logits = self.program(x, training=training, logits=True)
        return categorical_crossentropy(logits, y, self.label_smoothing, weights), logits.float()

    @torch.no_grad()
    def _accumulate(self, loss: Tensor, logits: Tensor, y: Tensor, weights: Tensor | None) -> None:
        """Add a batch to the loss tracker's and the accuracy's sums (device work only)."""
        tracker, accuracy = self._tracked
        n = y.shape[0]
        tracker.total.value.add_(loss.detach() * n)
        tracker.count.value.add_(n)
        correct = (logits.argmax(-1) == y.argmax(-1)).float()
        if weights is None:
            accuracy.total.value.add_(correct.sum())
            accuracy.count.value.add_(n)
        else:
            accuracy.total.value.add_((correct * weights).sum())
            accuracy.count.value.add_(weights.sum())

    def _read_logs(self) -> dict[str, Any]:
        """The logs after a step: read back from the device every `sync_every` steps."""
        tracker, accuracy = self._tracked
        self._steps += 1
        if self._steps % self.sync_every == 0 or not self._logs:
            logs = {"loss": tracker.total.value / tracker.count.value,
                    "accuracy": accuracy.total.value / accuracy.count.value}
            self._logs = logs if self.sync_every == 1 else {k: float(v) for k, v in logs.items()}
        return self._logs

    def make_train_function(self, force: bool = False) -> Callable:
        """Keras' ``fit`` calls this as it starts (`install` puts it on the model): the optimizer's
        step count is read afresh at the first update, since a resume may have restored it. After
        a recompile without the fast steps it takes itself off the model and leaves Keras' own."""
        if self.model.train_function != self.train_function:
            del self.model.make_train_function, self.model.reset_metrics
        elif self._adam is not None:
            self._adam.step = None
        return type(self.model).make_train_function(self.model, force)

    def reset_metrics(self) -> None:
        """Keras' ``reset_metrics`` (each epoch and evaluation starts with it; `install` puts this on
        the model): the next step's logs are read back, not the ones of the metrics just reset."""
        self._logs = {}
        type(self.model).reset_metrics(self.model)

    def train_function(self, data) -> dict[str, Any]:
        self._metrics(data)
        x, y, weights = self._batch(data)
        if self._graph_class is None or not self._through_graph(x, y, weights):
            self._step(x, y, weights)
        return self._read_logs()

    @property
    def captured(self) -> bool:
        """Whether training steps replay a captured graph."""
        return self._graph is not None

    def _step(self, x: Tensor, y: Tensor, weights: Tensor | None, graphed: bool = False) -> None:
        """One training step: forward, gradients, the optimizer's update, the metrics' sums.
        ``graphed``: the code a graph captures (`LeanAdam.graphed_apply`)."""
        loss, logits = self._forward(x, y, weights, True)
        optimizer = self.model.optimizer
        grads = torch.autograd.grad(optimizer.scale_loss(loss), self.params, allow_unused=True)
        with torch.no_grad():
            if graphed:
                self._adam.graphed_apply(grads)
            elif self._adam is not None:
                self._adam.apply(grads)
            else:
                optimizer.apply(list(grads), self.variables)
        self._accumulate(loss, logits, y, weights)

    def _through_graph(self, x: Tensor, y: Tensor, weights: Tensor | None) -> bool:
        """Run this step through the captured graph; False: run it eagerly. A batch shape's first
        `GRAPH_AFTER` steps warm up on the capture's stream, the last of them through the very code
        the graph captures; the next one is captured (then replayed, if capturing ran nothing)."""
        key = tuple((tuple(t.shape), t.dtype) if t is not None else None for t in (x, y, weights))
        if self._graph is not None:
            if key != self._graph.key:
                return False
            for static, batch in zip(self._graph.inputs, (x, y, weights)):
                if static is not None:
                    static.copy_(batch, non_blocking=True)
            self._adam.next_graphed_step()
            self._graph.graph.replay()
            return True
        warmups = self._warmups[key] = self._warmups.get(key, 0) + 1
        if warmups <= self.GRAPH_AFTER:
            last = warmups == self.GRAPH_AFTER
            if last:
                self._adam.next_graphed_step()
            with self._capture_stream():
                self._step(x, y, weights, graphed=last)
            return True
        inputs = [None if t is None else t.clone() for t in (x, y, weights)]
        saved_step = self._adam.step
        self._adam.next_graphed_step()
        if self._stream is not None:
            torch.cuda.synchronize(self.device)  # an earlier step's error surfaces here, not as the capture's
        try:
            with torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext():
                graph = self._graph_class(lambda: self._step(*inputs, graphed=True), self._stream)
        except Exception as exc:  # noqa: BLE001 - whatever stops the capture, the eager step still works
            self._adam.step, self._graph_class = saved_step, None
            causes = [exc] + ([exc.__context__] if exc.__context__ is not None else [])
            why = "; after ".join(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}" for e in causes)
            warnings.warn(f"kerascnn: the training step runs eagerly, it could not be captured as a graph ({why})",
                          stacklevel=1)  # raised deep inside Keras' fit: no caller's line would say more
            return False
        self._graph = CapturedStep(key, graph, inputs)
        if not graph.runs_on_capture:
            graph.replay()
        return True

    @contextlib.contextmanager
    def _capture_stream(self) -> Iterator[None]:
        """Work inside runs on the capture's stream (CUDA), ordered after and before the current one's."""
        if self._stream is None:
            yield
            return
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        try:
            with torch.cuda.stream(self._stream):
                yield
        finally:
            current.wait_stream(self._stream)

    @torch.no_grad()
    def test_function(self, data) -> dict[str, Any]:
        self._metrics(data)
        x, y, weights = self._batch(data)
        loss, logits = self._forward(x, y, weights, False)
        self._accumulate(loss, logits, y, weights)
        return self._read_logs()

    @torch.no_grad()
    def predict_function(self, data) -> Tensor:
        x, _, _ = self._batch(data)
        return self.program(x, training=False)


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks of up to 32 MiB (mallopt) instead of returning them
    to the OS, so every training step does not page-fault its activations in afresh (it did: 18% of
    the CPU went to the kernel; `benchmarks/framework_tax.py` measured 104 -> 88 ms per step for
    the default CNN). The remedy PyTorch's CPU tuning guide gives with jemalloc or tcmalloc, for the
    allocator already loaded. Once per process, Linux only; returns whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(libc.mallopt(option, value) == 1 for option, value in (
        (m_mmap_threshold, 32 << 20), (m_trim_threshold, 1 << 30), (m_top_pad, 64 << 20)))


def install(model: keras.Model, *, jit: bool = False) -> FastSteps | None:
    """Give the compiled ``model`` the fast train/test/predict functions; None (Keras' own steps
    stay) when the model or its compile settings are outside what `FastSteps` reproduces."""
    try:
        steps = FastSteps(model, jit=jit)
    except Unsupported:
        return None
    if steps.device.type == "cpu":
        keep_freed_memory()
    model.train_function = steps.train_function
    model.make_train_function = steps.make_train_function
    model.reset_metrics = steps.reset_metrics
    model.test_function = steps.test_function
    if steps.autocast is None:  # in mixed precision Keras' own predict matches a reloaded model.keras
        model.predict_function = steps.predict_function
    return steps
