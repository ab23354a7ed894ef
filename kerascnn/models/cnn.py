"""Convolutional networks trained from scratch: one configurable builder and its presets."""

from __future__ import annotations

import keras
from keras import layers

from kerascnn.errors import KerascnnError
from kerascnn.models.batch_norm import BN_MOMENTUM
from kerascnn.models.preprocessing import adapt_input
from kerascnn.models.registry import CNNSpec


def _activation(name: str, label: str) -> layers.Layer:
    if name == "leaky_relu":
        return layers.LeakyReLU(negative_slope=0.01, name=label)
    return layers.Activation(name, name=label)


def build_cnn(
    spec: CNNSpec,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    image_size: int | None = None,
    mean: list[float] | None = None,
    variance: list[float] | None = None,
    name: str = "cnn",
) -> keras.Model:
    """A functional CNN taking raw 0..255 pixels of ``input_shape`` and returning class probabilities."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = adapt_input(inputs, image_size=image_size, mean=mean, variance=variance, scale=None if mean else 1 / 255)
    size = min(x.shape[1], x.shape[2])
    if size < 2 ** len(spec.filters):
        raise KerascnnError(
            f"{name} pools {len(spec.filters)} times and needs images of at least {2 ** len(spec.filters)} pixels, "
            f"got {size}; pass --image-size {2 ** len(spec.filters) * 4} or fewer --filters"
        )
    pool = layers.MaxPooling2D if spec.pool == "max" else layers.AveragePooling2D
    for b, (width, convs) in enumerate(zip(spec.filters, spec.block_convs()), start=1):
        for c in range(1, convs + 1):
            x = layers.Conv2D(width, spec.kernel_size, padding="same", use_bias=not spec.batch_norm,
                              name=f"block{b}_conv{c}")(x)
            if spec.norm_after_pool and c == convs:
                x = pool(2, name=f"block{b}_pool")(x)
            if spec.batch_norm:
                x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{b}_bn{c}")(x)
            x = _activation(spec.activation, f"block{b}_act{c}")(x)
        if not spec.norm_after_pool:
            x = pool(2, name=f"block{b}_pool")(x)
        if spec.dropout:
            x = layers.Dropout(spec.dropout, name=f"block{b}_dropout")(x)
    if spec.global_pool:
        x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    else:
        x = layers.Flatten(name="head_flatten")(x)
    for d, units in enumerate(spec.dense, start=1):
        x = layers.Dense(units, use_bias=not spec.head_batch_norm, name=f"head_dense{d}")(x)
        if spec.head_batch_norm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"head_bn{d}")(x)
        x = _activation(spec.activation, f"head_act{d}")(x)
        if spec.head_dropout:
            x = layers.Dropout(spec.head_dropout, name=f"head_dropout{d}")(x)
    if spec.head_dropout and not spec.dense:
        x = layers.Dropout(spec.head_dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="head_logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)
