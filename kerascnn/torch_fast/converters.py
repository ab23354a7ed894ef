"""One converter per Keras layer type the program runs as torch ops (`converts`); a layer's settings
are read from its public ``get_config()``, its variables from the layer."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import torch
import torch.nn.functional as F
from keras import layers

from kerascnn import keras_compat

from .program import (
    NHWC_TO_NCHW,
    Step,
    Tensor,
    Unsupported,
    Value,
    converts,
    one_layout,
    pad_same,
    relayout,
    wide,
)

CONV_KERNEL = (3, 2, 0, 1)  # Keras (h, w, in, out) -> torch (out, in, h, w)
DEPTHWISE_KERNEL = (2, 3, 0, 1)  # Keras (h, w, in, multiplier) -> (in, multiplier, h, w)

# element-wise activations by the name Keras' get_config() gives them
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda x: x, "relu": F.relu, "relu6": F.relu6, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    "silu": F.silu, "swish": F.silu, "hard_sigmoid": F.hardsigmoid, "hard_silu": F.hardswish,
    "hard_swish": F.hardswish,
}
NON_NEGATIVE = ("relu", "relu6")  # activations whose outputs are >= 0


def activation(config: dict[str, Any]) -> tuple[Callable[[Tensor], Tensor], bool]:
    """The torch function of a layer's element-wise ``activation`` and whether its outputs are >= 0."""
    name = config.get("activation") or "linear"
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise Unsupported(f"activation {name!r}")
    return ACTIVATIONS[name], name in NON_NEGATIVE


def _variable(v: keras.Variable | None) -> Tensor | None:
    return None if v is None else v.value


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


class ChannelConstants:
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


@converts(*keras_compat.elementwise_operations())
def elementwise(operation: Any, node: keras_compat.GraphNode, cl: bool) -> Step:
    """A bare ``x + 3.0`` or ``x * (1 / 6)`` (MobileNetV3's hard sigmoid), tensors of one rank: they stay
    in their layout when they share it (or one meets constants), else meet in NCHW."""
    combine = keras_compat.elementwise_operations()[type(operation)]
    if node.kwargs or len(node.args) != 2:
        raise Unsupported("element-wise operation with other arguments")
    tensors = [a for a in node.args if isinstance(a, keras.KerasTensor)]
    if len({len(t.shape) for t in tensors}) > 1:
        raise Unsupported("broadcasting across ranks")  # Keras aligns NHWC's last axes
    slots: list[int | float] = []  # an index into the inputs, or a constant
    for arg in node.args:
        if isinstance(arg, keras.KerasTensor):
            slots.append(node.inputs.index(id(arg)))
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            slots.append(float(arg))
        else:
            raise Unsupported("element-wise operation with a constant that is not a Python number")

    def run(training: bool, *values: Value) -> Value:
        given_values = [values[i] if isinstance(i, int) else None for i in slots]
        given = one_layout(tuple(v for v in given_values if v is not None), cl)
        it = iter(given)
        args = [next(it).tensor if v is not None else c for v, c in zip(given_values, slots)]
        return Value(combine(*args), given[0].nchw)
    return run


@converts(layers.DepthwiseConv2D)
def depthwise_conv(layer: layers.DepthwiseConv2D, node: keras_compat.GraphNode, cl: bool) -> Step:
    config = layer.get_config()
    kernel, bias = layer.kernel.value, _variable(layer.bias)
    act, _ = activation(config)
    kh, kw, cin, mult = kernel.shape
    relayout(kernel, DEPTHWISE_KERNEL)
    k, s, d = (kh, kw), tuple(config["strides"]), tuple(config["dilation_rate"])
    same = config["padding"] == "same"
    # stride 1: torch pads inside the convolution; strided "same" may pad one side more, which
    # conv2d cannot, so pad_same pads a copy
    padding: str | int = "same" if same and s == (1, 1) else 0

    def depthwise(training: bool, v: Value) -> Value:
        x = v.as_nchw(cl)
        if same and padding == 0:
            x = pad_same(x, k, s, d)
        w = kernel.permute(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
        return Value(act(F.conv2d(x, w, bias, s, padding, d, cin)), True)
    return depthwise


@converts(layers.Conv2D)
def conv(layer: layers.Conv2D, node: keras_compat.GraphNode, cl: bool) -> Step:
    config = layer.get_config()
    kernel, bias = layer.kernel.value, _variable(layer.bias)
    act, nonneg = activation(config)
    k, s, d = tuple(kernel.shape[:2]), tuple(config["strides"]), tuple(config["dilation_rate"])
    groups, same = config["groups"], config["padding"] == "same"
    stride_one = s == (1, 1)
    relayout(kernel, CONV_KERNEL, channels_last=cl)

    def convolve(training: bool, v: Value) -> Value:
        w, b = kernel.permute(3, 2, 0, 1), bias
        pad = v.pad
        if pad and not same and pad[0] == pad[1] and pad[2] == pad[3]:  # ZeroPadding2D + valid conv
            x = Value(v.tensor, v.nchw).as_nchw(cl)
            return Value(act(F.conv2d(x, w, b, s, (pad[2], pad[0]), d, groups)), True, nonneg=nonneg)
        x = v.as_nchw(cl)
        if same and stride_one:
            y = F.conv2d(x, w, b, 1, "same", d, groups)
        else:
            y = F.conv2d(pad_same(x, k, s, d) if same else x, w, b, s, 0, d, groups)
        return Value(act(y), True, nonneg=nonneg)
    convolve.takes_padding = True
    return convolve


@converts(layers.BatchNormalization)
def batch_norm(layer: layers.BatchNormalization, node: keras_compat.GraphNode, cl: bool) -> Step:
    config = layer.get_config()
    if config.get("renorm") or config.get("synchronized"):
        raise Unsupported("batch renormalization")
    axis = config["axis"] if isinstance(config["axis"], int) else config["axis"][0]
    ndim = len(node.args[0].shape)
    if ndim not in (2, 4) or axis not in (-1, ndim - 1):
        raise Unsupported("batch norm other than over the channels of 2-D or 4-D inputs")
    gamma, beta = _variable(layer.gamma), _variable(layer.beta)
    moving_mean, moving_var = layer.moving_mean.value, layer.moving_variance.value
    momentum, eps, train = float(config["momentum"]), float(config["epsilon"]), layer.trainable

    def normalize(training: bool, v: Value) -> Value:
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
    return normalize


@converts(layers.Dense)
def dense(layer: layers.Dense, node: keras_compat.GraphNode, cl: bool) -> Step:
    config = layer.get_config()
    kernel, bias = layer.kernel.value, _variable(layer.bias)
    act, _ = activation(config)
    if config.get("lora_rank") or getattr(layer, "lora_enabled", False) or layer.dtype_policy.quantization_mode:
        raise Unsupported("dense variant")
    return lambda training, v: Value(act(F.linear(v.as_nhwc(), kernel.t(), bias)))


@converts(layers.Activation)
def activation_layer(layer: layers.Activation, node: keras_compat.GraphNode, cl: bool) -> Step:
    if layer.get_config()["activation"] == "softmax":
        return lambda training, v: Value(torch.softmax(wide(v.as_nhwc()), dim=-1))
    act, nonneg = activation(layer.get_config())
    return lambda training, v: Value(act(v.tensor), v.nchw, nonneg=nonneg)


@converts(layers.ReLU)
def relu(layer: layers.ReLU, node: keras_compat.GraphNode, cl: bool) -> Step:
    config = layer.get_config()
    if config["negative_slope"] or config["threshold"]:
        raise Unsupported("ReLU with slope or threshold")
    if config["max_value"] is None:
        return lambda training, v: Value(F.relu(v.tensor), v.nchw, nonneg=True)
    top = float(config["max_value"])
    return lambda training, v: Value(F.hardtanh(v.tensor, 0.0, top), v.nchw, nonneg=True)


@converts(layers.LeakyReLU)
def leaky_relu(layer: layers.LeakyReLU, node: keras_compat.GraphNode, cl: bool) -> Step:
    slope = float(layer.get_config()["negative_slope"])
    return lambda training, v: Value(F.leaky_relu(v.tensor, slope), v.nchw)


@converts(layers.AveragePooling2D)
def average_pool(layer: layers.AveragePooling2D, node: keras_compat.GraphNode, cl: bool) -> Step:
    config = layer.get_config()
    if config["padding"] == "same":
        raise Unsupported("same-padded average pooling")
    size, stride = tuple(config["pool_size"]), tuple(config["strides"])
    return lambda training, v: Value(F.avg_pool2d(v.as_nchw(cl), size, stride), True)


@converts(layers.MaxPooling2D)
def max_pool(layer: layers.MaxPooling2D, node: keras_compat.GraphNode, cl: bool) -> Step:
    config = layer.get_config()
    size, stride, same = tuple(config["pool_size"]), tuple(config["strides"]), config["padding"] == "same"

    def pool(training: bool, v: Value) -> Value:
        pad = v.pad
        if pad and not same and v.nonneg and pad[0] == pad[1] and pad[2] == pad[3] \
                and 2 * max(pad) <= min(size):  # zero padding of values >= 0 is -inf padding
            x = Value(v.tensor, v.nchw).as_nchw(cl)
            return Value(F.max_pool2d(x, size, stride, (pad[2], pad[0])), True, nonneg=True)
        x = v.as_nchw(cl)
        x = pad_same(x, size, stride, (1, 1), -math.inf) if same else x
        return Value(F.max_pool2d(x, size, stride), True, nonneg=v.nonneg)
    pool.takes_padding = True
    return pool


@converts(layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D)
def global_pool(layer: layers.Layer, node: keras_compat.GraphNode, cl: bool) -> Step:
    keep = layer.get_config()["keepdims"]
    if type(layer) is layers.GlobalAveragePooling2D:
        return lambda training, v: Value(v.as_nchw(cl).mean((2, 3), keepdim=keep), keep)
    return lambda training, v: Value(v.as_nchw(cl).amax((2, 3), keepdim=keep), keep)


@converts(layers.ZeroPadding2D)
def zero_padding(layer: layers.ZeroPadding2D, node: keras_compat.GraphNode, cl: bool) -> Step:
    (top, bottom), (left, right) = layer.get_config()["padding"]

    def zero_pad(training: bool, v: Value) -> Value:
        v = v.applied(cl)
        return Value(v.tensor, v.nchw, (left, right, top, bottom), v.nonneg)
    zero_pad.takes_padding = True
    return zero_pad


@converts(layers.Dropout)
def dropout_layer(layer: layers.Dropout, node: keras_compat.GraphNode, cl: bool) -> Step:
    config = layer.get_config()
    rate, noise = float(config["rate"]), config["noise_shape"]

    def drop(training: bool, v: Value) -> Value:
        if not (training and rate):
            return v
        if noise is None:
            return Value(dropout(v.tensor, rate), v.nchw, nonneg=v.nonneg)
        x = v.as_nhwc()  # Keras' rule: None takes the input's size, then the mask broadcasts
        shape = tuple(x.shape[i] if d is None else d for i, d in enumerate(noise))
        if v.nchw and len(shape) == 4:  # the same mask, drawn in the program's layout
            return Value(dropout(v.tensor, rate, tuple(shape[i] for i in NHWC_TO_NCHW)), True, nonneg=v.nonneg)
        return Value(dropout(x, rate, shape), nonneg=v.nonneg)
    return drop


@converts(layers.Reshape)
def reshape(layer: layers.Reshape, node: keras_compat.GraphNode, cl: bool) -> Step:
    target = tuple(layer.get_config()["target_shape"])  # EfficientNet's squeeze-excite: (n, c) -> (n, 1, 1, c)
    return lambda training, v: Value(v.as_nhwc().reshape(v.tensor.shape[0], *target))


@converts(layers.Flatten)
def flatten(layer: layers.Flatten, node: keras_compat.GraphNode, cl: bool) -> Step:
    return lambda training, v: Value(v.as_nhwc().flatten(1))


@converts(layers.Add, layers.Multiply)
def merge(layer: layers.Layer, node: keras_compat.GraphNode, cl: bool) -> Step:
    combine = torch.add if type(layer) is layers.Add else torch.mul

    def run(training: bool, *values: Value) -> Value:
        values = one_layout(values, cl)
        out = values[0].tensor
        for v in values[1:]:
            out = combine(out, v.tensor)
        return Value(out, values[0].nchw)
    return run


@converts(layers.Concatenate)
def concatenate(layer: layers.Concatenate, node: keras_compat.GraphNode, cl: bool) -> Step:
    axis = layer.get_config()["axis"]  # grey_to_rgb: one channel three times
    if axis not in (-1, 3):
        raise Unsupported("concatenation off the channel axis")

    def run(training: bool, *values: Value) -> Value:
        four_d = values[0].tensor.dim() == 4  # channels: dim 1 in NCHW; other ranks keep Keras' layout
        return Value(torch.cat([v.as_nchw(cl) for v in values], 1 if four_d else axis), four_d)
    return run


@converts(layers.Resizing)
def resizing(layer: layers.Resizing, node: keras_compat.GraphNode, cl: bool) -> Step:
    config = layer.get_config()  # what Keras' torch backend runs for these settings
    if config["interpolation"] != "bilinear" or config.get("antialias") or config.get("crop_to_aspect_ratio") \
            or config.get("pad_to_aspect_ratio"):
        raise Unsupported("resizing other than plain bilinear")
    size = (config["height"], config["width"])
    return lambda training, v: Value(F.interpolate(wide(v.as_nchw(cl)), size=size, mode="bilinear",
                                                   align_corners=False), True)


@converts(layers.Rescaling)
def rescaling(layer: layers.Rescaling, node: keras_compat.GraphNode, cl: bool) -> Step:
    config = layer.get_config()  # EfficientNet's ImageNet input takes one scale per channel
    constants = ChannelConstants(_channel_constant(config["scale"]), _channel_constant(config["offset"]))

    def rescale(training: bool, v: Value) -> Value:
        x = wide(v.tensor)
        scale, offset = constants.for_value(x, v.nchw)
        return Value(x * scale + offset, v.nchw)
    return rescale


@converts(layers.Normalization)
def normalization(layer: layers.Normalization, node: keras_compat.GraphNode, cl: bool) -> Step:
    config = layer.get_config()
    axis = config["axis"]
    if config["invert"] or (tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)) not in ((-1,), (3,)):
        raise Unsupported("normalization axis")
    mean, variance = keras_compat.normalization_statistics(layer)
    if not (torch.is_tensor(mean) and torch.is_tensor(variance)):
        raise Unsupported("unadapted normalization")
    stats = ChannelConstants(mean.detach().float().reshape(-1),
                             torch.clamp(torch.sqrt(variance.detach().float().reshape(-1)),
                                         min=keras.backend.epsilon()))

    def normalize(training: bool, v: Value) -> Value:
        x = wide(v.tensor)
        m, std = stats.for_value(x, v.nchw)
        return Value((x - m) / std, v.nchw)
    return normalize
