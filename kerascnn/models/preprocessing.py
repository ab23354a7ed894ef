"""Input adaptation inside the model, so a saved ``model.keras`` takes raw 0..255 pixels."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and variance of uint8 images (n, h, w, c), in 0..255 units."""
    flat = images.reshape(-1, images.shape[-1]).astype(np.float64)
    return flat.mean(axis=0).tolist(), np.maximum(flat.var(axis=0), 1e-6).tolist()


def adapt_input(
    inputs: keras.KerasTensor,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    mean: Sequence[float] | None = None,
    variance: Sequence[float] | None = None,
    scale: float | None = None,
    offset: float = 0.0,
) -> keras.KerasTensor:
    """Resize to ``image_size``, turn grey into ``channels`` = 3, then normalise.

    Normalisation is ``(x - mean) / sqrt(variance)`` per channel when ``mean`` is given,
    else ``x * scale + offset`` when ``scale`` is given.
    """
    x = inputs
    height, width, in_channels = inputs.shape[1:]
    if image_size and (height, width) != (image_size, image_size):
        x = layers.Resizing(image_size, image_size, interpolation="bilinear", name="resize")(x)
    if channels == 3 and in_channels == 1:
        x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
        if mean is not None and len(mean) == 1:
            mean, variance = list(mean) * 3, list(variance) * 3
    if mean is not None:
        x = layers.Normalization(mean=list(mean), variance=list(variance), name="normalize")(x)
    elif scale is not None:
        x = layers.Rescaling(scale, offset=offset, name="rescale")(x)
    return x
