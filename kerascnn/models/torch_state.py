"""Reading PyTorch ``.pth`` state dicts into NumPy without PyTorch: the file is parsed, never trusted.

``torch.save`` writes a zip archive of a pickle (``data.pkl``) whose tensors point at raw storages
(``data/<key>``). The unpickler below rebuilds only tensor records, ordered dicts and (inert)
``argparse.Namespace`` objects and refuses any other class, so loading a file runs no code from it.
Every tensor record is checked before a view of its storage is made (known dtype, non-negative sizes
and strides, offset and last element inside the storage, no more elements than the storage holds),
and no storage may declare more bytes than the file has. Any failure is `UnreadableState`.
"""

from __future__ import annotations

import math
import pickle
import reprlib
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}  # fmt: skip
MAX_DIMENSION = 2**31  # no axis of a real tensor is longer
MAX_RANK = 32  # nor has a real tensor more axes (NumPy takes 64)


class UnreadableState(ValueError):
    """A ``.pth`` file that is not a readable state dict; the message names the file and the tensor."""


class _StorageType:
    def __init__(self, name: str) -> None:
        if name not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unsupported tensor storage {name}")
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage(NamedTuple):
    key: str
    array: np.ndarray


class _TensorRecord(NamedTuple):
    """A tensor as the pickle describes it; `_tensor` checks it against its storage."""

    storage: Any
    offset: Any
    size: Any
    stride: Any


class _Inert:
    """What an ``argparse.Namespace`` (torchvision's reference scripts save their arguments) becomes:
    an object that keeps nothing and runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _rebuild_tensor(storage, offset, size, stride, *rest) -> _TensorRecord:
    return _TensorRecord(storage, offset, size, stride)


def _rebuild_parameter(data, *rest):
    return data


def _whole_numbers(values: Any, what: str) -> tuple[int, ...]:
    if not (isinstance(values, (tuple, list)) and len(values) <= MAX_RANK
            and all(type(v) is int and 0 <= v < MAX_DIMENSION for v in values)):
        raise UnreadableState(f"its {what} {reprlib.repr(values)} must be at most {MAX_RANK} whole numbers "
                              "from 0 to 2^31")
    return tuple(values)


def _tensor(record: _TensorRecord) -> np.ndarray:
    """The array of ``record``, once its size, stride and offset are known to lie inside its storage."""
    if not isinstance(record.storage, _Storage):
        raise UnreadableState("it has no storage")
    array, (offset,) = record.storage.array, _whole_numbers([record.offset], "offset")  # [offset]: one number
    size, stride = _whole_numbers(record.size, "sizes"), _whole_numbers(record.stride, "strides")
    if len(size) != len(stride):
        raise UnreadableState(f"it has {len(size)} sizes but {len(stride)} strides")
    count = math.prod(size)
    if count > len(array):
        raise UnreadableState(f"it has {count} elements, its storage data/{record.storage.key} {len(array)}")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if count else offset - 1
    if last >= len(array) or offset > len(array):
        raise UnreadableState(f"it reaches element {last} of its storage data/{record.storage.key}, "
                              f"which has {len(array)}")
    if not count:
        return np.zeros(size, array.dtype)
    item = array.dtype.itemsize
    return np.array(np.lib.stride_tricks.as_strided(array[offset:], shape=size, strides=[s * item for s in stride]))


def _unwrap(state: Any) -> dict[str, Any]:
    """The state dict inside the wrappings of torchvision's reference scripts (``model``), Lightning
    (``state_dict``, keys under the module's attribute) and DistributedDataParallel (``module.``)."""
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        what = "a tensor" if isinstance(state, _TensorRecord) else f"a {type(state).__name__}"
        raise UnreadableState(f"it holds {what}, not a state dict of named tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    heads = {k.split(".", 1)[0] for k in state}
    if len(heads) == 1 and all("." in k for k in state) and heads & {"model", "net", "backbone"}:
        state = {k.split(".", 1)[1]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a ``torch.save`` zip archive (a state dict) as NumPy arrays, by key; anything
    that is not one, or that a check refuses, is `UnreadableState` naming the file (and the tensor)."""
    path = Path(path)
    try:
        state = _unpickle(path)
    except UnreadableState as exc:
        raise UnreadableState(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a hostile file may break the parser anywhere: refuse it
        raise UnreadableState(f"{path}: not a readable torch.save archive ({type(exc).__name__}: {exc})") from None
    tensors = {}
    try:
        state = _unwrap(state)
    except UnreadableState as exc:
        raise UnreadableState(f"{path}: {exc}") from None
    budget = 2 * path.stat().st_size  # what the arrays may take together (tied weights copy a storage twice)
    for key, value in state.items():
        if isinstance(value, _TensorRecord):
            try:
                tensors[key] = _tensor(value)
                budget -= tensors[key].nbytes
                if budget < 0:
                    raise UnreadableState("the tensors so far take more than twice the file's size")
            except UnreadableState as exc:
                raise UnreadableState(f"{path}: tensor {reprlib.repr(key)}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - whatever a hostile record breaks: refuse it
                raise UnreadableState(f"{path}: tensor {reprlib.repr(key)} cannot be read "
                                      f"({type(exc).__name__})") from None
    if not tensors:
        raise UnreadableState(f"{path}: holds no tensors")
    return tensors


def _unpickle(path: Path) -> Any:
    budget = [path.stat().st_size]  # the storages together may not hold more bytes than the file has
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pickles:
            raise UnreadableState("not a torch.save archive (no data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}

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
                if module == "argparse" and name == "Namespace":
                    return _Inert
                raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                        and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
                    raise UnreadableState(f"unknown persistent record {reprlib.repr(pid)}")
                storage_type, key = pid[1], pid[2]
                if key not in storages:
                    info = archive.getinfo(f"{prefix}data/{key}")
                    budget[0] -= info.file_size
                    if budget[0] < 0 or info.file_size % storage_type.dtype.itemsize:
                        raise UnreadableState(f"storage data/{key} declares {info.file_size} bytes, more than the "
                                              f"file holds, or not whole {storage_type.dtype} elements")
                    data = archive.read(info)
                    storages[key] = _Storage(key, np.frombuffer(data, dtype=storage_type.dtype))
                storage = storages[key]
                if storage.array.dtype != storage_type.dtype:
                    raise UnreadableState(f"storage data/{key} is read as two dtypes")
                return storage

        with archive.open(pickles[0]) as f:
            return Unpickler(f).load()
