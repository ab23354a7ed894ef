"""Reading PyTorch ``.pth`` state dicts into NumPy without PyTorch.

``torch.save`` writes a zip archive of a pickle (``data.pkl``) whose tensors point at raw storages
(``data/<key>``). The unpickler below rebuilds only plain tensors and ordered dicts from that
archive and refuses any other class, so loading a file runs no code from it.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}  # fmt: skip


class _StorageType:
    def __init__(self, name: str) -> None:
        if name not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unsupported tensor storage {name}")
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size), strides=[s * item for s in stride])
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a ``torch.save`` zip archive (a state dict) as NumPy arrays, by key."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pickles:
            raise ValueError(f"{path} is not a torch.save archive (no data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if module == "torch._utils" and name == "_rebuild_tensor_v2":
                    return _rebuild_tensor
                if module == "torch._utils" and name == "_rebuild_parameter":
                    return _rebuild_parameter
                if module == "torch" and name.endswith("Storage"):
                    return _StorageType(name)
                if module == "collections" and name == "OrderedDict":
                    return OrderedDict
                raise pickle.UnpicklingError(f"refusing to load {module}.{name} from {path}")

            def persistent_load(self, pid):
                _, storage_type, key, _location, _numel = pid
                return np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=storage_type.dtype)

        with archive.open(pickles[0]) as f:
            state = Unpickler(f).load()
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, np.ndarray)}
