"""kerascnn: image classification with convolutional networks on Keras 3.

Importing the package selects the PyTorch backend unless ``KERAS_BACKEND`` is already set.
Keras itself is imported only when a name that needs it is first used, so a command line can
still choose the backend after ``import kerascnn``.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

if os.environ.get("KERASCNN_EMULATE_DEVICES"):  # tests: one CPU seen as several devices
    from kerascnn.distribute import emulate_devices

    emulate_devices(int(os.environ["KERASCNN_EMULATE_DEVICES"]))

_LAZY = {
    "RunConfig": ("kerascnn.config", "RunConfig"),
    "KerascnnError": ("kerascnn.errors", "KerascnnError"),
    "resolve": ("kerascnn.resolution", "resolve"),
    "run": ("kerascnn.runner", "run"),
    "resume": ("kerascnn.runner", "resume"),
    "load_data": ("kerascnn.data", "load"),
    "build_model": ("kerascnn.models", "build"),
    "load_model": ("kerascnn.saving", "load_model"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kerascnn' has no attribute {name!r}")
