"""Building a registered model (`kerascnn.models.registry`) as a Keras functional model that takes
raw 0..255 pixels (preprocessing inside) and outputs class probabilities; checking its options."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
from keras import layers

from kerascnn.errors import KerascnnError
from kerascnn.models.backbones import build_backbone, imagenet_preprocessing
from kerascnn.models.cnn import build_cnn
from kerascnn.models.preprocessing import adapt_input, channel_stats
from kerascnn.models.registry import CNN_OPTIONS, MODELS, ModelSpec, get
from kerascnn.models.stages import choose_stages
from kerascnn.models.weights import load_weights, weights_file

log = logging.getLogger("kerascnn")
MIN_BACKBONE_SIZE = 32


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build (and train) models inside this context with Keras dtype policy ``name``
    (``float32``, ``mixed_bfloat16``, ``mixed_float16``); the softmax output stays float32."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def check(name: str, weights: str = "none", unfreeze: str | None = None, **options: Any) -> None:
    """Raise `KerascnnError` unless model ``name`` exists, can take ``weights`` (``none``,
    ``imagenet`` for pretrained models, an existing file), has the stages ``unfreeze`` names, and
    takes architecture ``options`` (None: not given; they shape scratch CNNs only)."""
    spec = get(name)
    if unfreeze is not None:
        choose_stages(unfreeze, spec.stage_names(options.get("filters")), name)
    weights = weights or "none"
    if weights == "imagenet" and not spec.pretrained:
        raise KerascnnError(f"{name} has no ImageNet weights; use --weights none or --weights PATH", option="weights")
    if weights not in ("imagenet", "none"):
        weights_file(weights)
    given = [k for k, v in options.items() if v is not None]
    unknown = [k for k in given if k not in CNN_OPTIONS]
    if unknown:
        raise KerascnnError(f"unknown architecture option {unknown[0]!r}; known: {', '.join(CNN_OPTIONS)}")
    if spec.cnn is None and given:
        cnns = ", ".join(n for n, s in MODELS.items() if s.cnn is not None)
        raise KerascnnError(f"--{given[0].replace('_', '-')} shapes scratch CNNs ({cnns}), not {name}; "
                            "leave it out (backbones take --head-dropout)", option=given[0])
    if spec.cnn is not None:
        spec.cnn.replace(**options).block_convs()


def architecture(name: str, head_dropout: float | None = None, **options: Any) -> dict[str, Any]:
    """The resolved architecture of model ``name``: its CNN preset with ``options`` applied, or its
    backbone with the new head."""
    check(name, **options)
    spec = get(name)
    if spec.cnn is not None:
        return dataclasses.asdict(spec.cnn.replace(head_dropout=head_dropout, **options))
    return {"backbone": name, "head": "global average pool, dropout, dense softmax",
            "head_dropout": head_dropout or 0.0}


def build(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    image_size: int | None = None,
    weights: str | None = "none",
    sample: np.ndarray | Callable[[], np.ndarray] | None = None,
    head_dropout: float | None = None,
    **options: Any,
) -> keras.Model:
    """Build model ``name`` for raw 0..255 images of ``input_shape`` (h, w, c).

    ``image_size`` resizes inside the model (default: the model's, else the input's). ``weights``:
    ``none``, ``imagenet`` (pretrained models) or a PATH (see `load_weights`); what was loaded is
    ``model.weights_source``. Scratch CNNs normalise with the per-channel statistics of ``sample``
    images (uint8, n x h x w x c, or a function returning them, called for scratch CNNs only;
    default: scale to 0..1) and take architecture ``options``
    (``filters``, ``dropout``, ...) over their preset. Backbones use their ImageNet normalisation,
    turn grey into RGB and get a new head: global average pooling, ``head_dropout`` (default 0; a
    CNN's default is its preset's) and a dense softmax layer.
    """
    weights = weights or "none"
    check(name, weights, **options)
    spec = get(name)
    if spec.cnn is not None:
        images = sample() if callable(sample) else sample
        mean, variance = channel_stats(images) if images is not None else (None, None)
        model = build_cnn(spec.cnn.replace(head_dropout=head_dropout, **options), tuple(input_shape), num_classes,
                          image_size=image_size, mean=mean, variance=variance, name=name)
    else:
        model = _with_head(spec, input_shape, num_classes, spec.working_size(image_size, input_shape[0]),
                           weights == "imagenet", head_dropout)
    source: dict[str, Any] = {"source": weights}
    if weights not in ("imagenet", "none"):
        source = load_weights(model, weights)
        loaded, new = source.get("layers_loaded", source.get("tensors_loaded")), source["layers_new"]
        report = log.warning if len(new) > loaded else log.info  # mostly new: probably another architecture
        report("--weights %s: %s loaded; new: %s", weights, loaded, ", ".join(new) or "none")
    object.__setattr__(model, "weights_source", source)  # a plain attribute: not tracked, not saved
    return model


def _with_head(spec: ModelSpec, input_shape: tuple[int, int, int], num_classes: int, size: int, imagenet: bool,
               head_dropout: float | None) -> keras.Model:
    if size < MIN_BACKBONE_SIZE:
        raise KerascnnError(f"{spec.name} needs --image-size of at least {MIN_BACKBONE_SIZE}, got {size}",
                            option="image_size")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = adapt_input(inputs, image_size=size, channels=3, **imagenet_preprocessing(spec.preprocess))
    x = build_backbone(spec, (size, size, 3), imagenet)(x)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    if head_dropout:
        x = layers.Dropout(head_dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="head_logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=spec.name)

