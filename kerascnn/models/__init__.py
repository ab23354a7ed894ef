"""Models: scratch CNNs and pretrained backbones, one `registry.ModelSpec` each, built as Keras
functional models that take raw 0..255 pixels (preprocessing inside) and output probabilities.

The registry imports no Keras; the names that need it are imported when first used, so a command
line can list the models and still choose the backend afterwards.
"""

from kerascnn.models.registry import (
    CNN_OPTIONS,
    MODELS,
    CNNSpec,
    ModelSpec,
    Weights,
    get,
    markdown_table,
    model_names,
    register,
)

_LAZY = {
    "architecture": "building", "build": "building", "check": "building",
    "dtype_policy": "building", "channel_stats": "preprocessing", "load_weights": "weights",
    "set_trainable": "freezing", "stage_params": "freezing", "trainable_params": "freezing",
}

__all__ = ["CNN_OPTIONS", "MODELS", "CNNSpec", "ModelSpec", "Weights", "get", "markdown_table", "model_names",
           "register", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"kerascnn.models.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kerascnn.models' has no attribute {name!r}")
