"""ResNet-18 and ResNet-34 as Keras functional models with torchvision's layout and names.

Layer names follow torchvision's state-dict keys with dots as underscores (``layer1.0.conv1`` is
``layer1_0_conv1``), padding is explicit and symmetric like PyTorch's, and batch norm uses
PyTorch's epsilon (1e-5) and momentum (0.1, i.e. Keras' 0.9), so torchvision checkpoints port
exactly (`port_torchvision_resnet`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from kerascnn.models.batch_norm import BN_EPSILON, BN_MOMENTUM

BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
WIDTHS = (64, 128, 256, 512)
BN = {"epsilon": BN_EPSILON, "momentum": BN_MOMENTUM}


def _conv_bn(x, filters: int, kernel: int, stride: int, conv: str, bn: str, relu: bool):
    if kernel > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{conv}_pad")(x)
    x = layers.Conv2D(filters, kernel, strides=stride, use_bias=False, name=conv)(x)
    x = layers.BatchNormalization(name=bn, **BN)(x)
    return layers.ReLU(name=f"{bn}_relu")(x) if relu else x


def _basic_block(x, filters: int, stride: int, name: str):
    """torchvision's BasicBlock: 3x3 conv, BN, ReLU, 3x3 conv, BN, + shortcut, ReLU."""
    shortcut = x
    y = _conv_bn(x, filters, 3, stride, f"{name}_conv1", f"{name}_bn1", relu=True)
    y = _conv_bn(y, filters, 3, 1, f"{name}_conv2", f"{name}_bn2", relu=False)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, stride, f"{name}_downsample_0", f"{name}_downsample_1", relu=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet_backbone(depth_name: str, input_shape: tuple[int, int, int] = (224, 224, 3),
                    name: str = "backbone") -> keras.Model:
    """The convolutional part of ``resnet18``/``resnet34`` (stem, ``layer1``..``layer4``), without pooling."""
    inputs = keras.Input(shape=input_shape, name="normalized_image")
    x = _conv_bn(inputs, 64, 7, 2, "conv1", "bn1", relu=True)
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)  # after ReLU, zero padding equals -inf padding
    x = layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    for stage, (blocks, width) in enumerate(zip(BLOCKS[depth_name], WIDTHS), start=1):
        for b in range(blocks):
            x = _basic_block(x, width, 2 if (b == 0 and stage > 1) else 1, f"layer{stage}_{b}")
    return keras.Model(inputs, x, name=name)


def port_torchvision_resnet(state: dict[str, np.ndarray], backbone: keras.Model) -> list[str]:
    """Copy a torchvision ResNet state dict into ``backbone`` (from `resnet_backbone`).

    Convolution kernels go from (out, in, h, w) to (h, w, in, out); batch norm takes weight, bias,
    running mean and variance. ``fc.*`` is ignored (the head is rebuilt). Returns the state-dict
    keys used; raises ``ValueError`` when a layer's tensors are missing or mis-shaped.
    """
    used = []
    for layer in backbone.layers:
        key = _torch_key(layer.name)
        if isinstance(layer, layers.Conv2D):
            names = [f"{key}.weight"]
            values = [np.transpose(_get(state, names[0]), (2, 3, 1, 0))]
        elif isinstance(layer, layers.BatchNormalization):
            names = [f"{key}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]
            values = [_get(state, n) for n in names]
        else:
            continue
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(f"{key}: shapes {[v.shape for v in values]} do not fit {expected}")
        layer.set_weights([v.astype(np.float32) for v in values])
        used += names
    return used


def _torch_key(layer_name: str) -> str:
    """``layer1_0_downsample_0`` -> ``layer1.0.downsample.0``; ``conv1`` stays."""
    return layer_name.replace("_", ".")


def _get(state: dict[str, np.ndarray], key: str) -> np.ndarray:
    if key not in state:
        raise ValueError(f"the state dict has no {key!r}; is it a torchvision ResNet of this depth?")
    return np.asarray(state[key])
