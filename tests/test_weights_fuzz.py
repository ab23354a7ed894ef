"""Hostile ``.pth`` files given to ``--weights``: over 300 mutations of a valid ``torch.save`` archive
(sizes, strides, offsets, dtypes, truncated storages and archives, flipped bytes, pickles with foreign
globals) each end in a load or a one-line refusal, never a signal or a traceback. The cases run in
child processes, a batch each, so that a crash is caught and names its case."""

from __future__ import annotations

import io
import itertools
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the cases are written with torch's own pickle globals")
import torch._utils  # noqa: E402, F811 - the module of the globals torch.save pickles

ROOT = Path(__file__).resolve().parent.parent
HUGE = 2**40


class Storage:
    def __init__(self, key: str, type_name: str, numel: int) -> None:
        self.key, self.type_name, self.numel = key, type_name, numel


class Tensor:
    """A tensor record to pickle as torch does, with whatever metadata a case gives it."""

    def __init__(self, storage: Storage, offset, size, stride) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class Call:
    """A pickled call of ``fn(*args)``: what a malicious pickle does."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", storage_class(obj.type_name), obj.key, "cpu", obj.numel)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, Tensor):
            return torch._utils._rebuild_tensor_v2, (obj.storage, obj.offset, obj.size, obj.stride, False,
                                                      OrderedDict())
        if isinstance(obj, Call):
            return obj.fn, obj.args
        return NotImplemented


def storage_class(name: str):
    """``torch.<name>`` as a pickle global, made up for names torch lacks."""
    if not hasattr(torch, name):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    return getattr(torch, name)


def archive(state, storages: dict[str, bytes], folder: str = "resnet18") -> bytes:
    """A zip laid out as ``torch.save`` writes one."""
    pickled = io.BytesIO()
    TorchPickler(pickled, protocol=2).dump(state)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{folder}/data.pkl", pickled.getvalue())
        z.writestr(f"{folder}/byteorder", "little")
        for key, data in storages.items():
            z.writestr(f"{folder}/data/{key}", data)
        z.writestr(f"{folder}/version", "3\n")
    return out.getvalue()


def real_state() -> dict[str, np.ndarray]:
    """A torchvision-layout ResNet-18 state dict (random weights), as NumPy arrays."""
    from torch_resnet import random_resnet

    return {k: v.numpy() for k, v in random_resnet(num_classes=10).state_dict().items()}


def cases(tmp_path: Path) -> list[Path]:
    state = real_state()
    storages = {str(i): np.ascontiguousarray(v).tobytes() for i, v in enumerate(state.values())}
    dtype_names = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}
    records = OrderedDict(  # contiguous strides, as torch.save writes them (a 0-d tensor has none)
        (k, Tensor(Storage(str(i), dtype_names[v.dtype], v.size), 0, list(v.shape),
                   [int(np.prod(v.shape[d + 1:])) for d in range(v.ndim)]))
        for i, (k, v) in enumerate(state.items()))
    made: list[tuple[str, bytes]] = [("valid", archive(records, storages))]
    # the wrappings of torchvision's reference scripts, Lightning and DistributedDataParallel load
    import argparse

    made += [("torchvision reference checkpoint", archive({"model": records, "args": argparse.Namespace(lr=0.1),
                                                            "epoch": 3}, storages)),
             ("lightning", archive({"state_dict": OrderedDict((f"model.{k}", v) for k, v in records.items()),
                                    "epoch": 1}, storages)),
             ("ddp", archive(OrderedDict((f"module.{k}", v) for k, v in records.items()), storages))]
    # the mutations start from the stem's tensors alone (40 KB, not 45 MB): refused by the port if not before
    records = OrderedDict(list(records.items())[:6])
    storages = {t.storage.key: storages[t.storage.key] for t in records.values()}
    # one tensor's metadata mutated, every way a hostile file can (the first conv's and a running mean's)
    conv, mean = "conv1.weight", "bn1.running_mean"
    offsets = [-1, -HUGE, 1, 2**63, 10**30, 1.5, "0", None, True]
    sizes = [[HUGE], [-1], [0, HUGE], [], [HUGE, HUGE, 0, 1], [2**31, 2**31], "x", [1.0], None, [3, -3, 7, 7]]
    strides = [[HUGE, 1, 1, 1], [-1, 1, 1, 1], [0, 0, 0, 0], [1], [], [2**63] * 4, [1.5] * 4, None]
    for key, (field, values) in itertools.product((conv, mean), (("offset", offsets), ("size", sizes),
                                                                 ("stride", strides))):
        for value in values:
            mutated = OrderedDict(records)
            t = records[key]
            mutated[key] = Tensor(t.storage, *[value if f == field else getattr(t, f)
                                               for f in ("offset", "size", "stride")])
            made.append((f"{key} {field} {value!r:.40}", archive(mutated, storages)))
    for key, (size, stride) in itertools.product((conv, mean), [([64, 3, 7, HUGE], [147, 49, 7, 0]),
                                                                ([HUGE], [0]), ([2**20] * 4, [0] * 4),
                                                                ([64, 3, 7, 8], [147, 49, 7, 1])]):
        mutated = OrderedDict(records)
        mutated[key] = Tensor(records[key].storage, 0, size, stride)
        made.append((f"{key} size {size} stride {stride}", archive(mutated, storages)))
    # storages: unknown or numpy-less dtypes, missing, truncated, declared larger than the file
    for type_name in ("BFloat16Storage", "QInt8Storage", "ComplexFloatStorage", "Storage", "UntypedStorage",
                      "Bogus", "DoubleStorage", "HalfStorage", "BoolStorage", "ByteStorage"):
        mutated = OrderedDict(records)
        t = records[conv]
        mutated[conv] = Tensor(Storage(t.storage.key, type_name, t.storage.numel), t.offset, t.size, t.stride)
        made.append((f"storage type {type_name}", archive(mutated, storages)))
    for cut in (0, 1, 3, 4, 5, 7, 100, 9407 * 4 - 1, 9407 * 4 - 4):
        made.append((f"storage 0 cut to {cut} bytes", archive(records, {**storages, "0": storages["0"][:cut]})))
    made.append(("storage 0 missing", archive(records, {k: v for k, v in storages.items() if k != "0"})))
    made.append(("no data.pkl", archive(records, storages).replace(b"data.pkl", b"data.pkX")))
    # foreign globals: code a pickle would run, classes it would build
    for fn, args in [(os.system, ("echo pwned",)), (eval, ("1+1",)), (subprocess.Popen, (["true"],)),
                     (getattr, ("x", "upper")), (torch.nn.Linear, (2, 2)), (np.frombuffer, (b"abcd",)),
                     (pickle.loads, (b"N.",)), (OrderedDict, ([("a", 1)],)), (torch._utils._rebuild_parameter, (1,)),
                     (argparse.ArgumentParser, ())]:
        name = getattr(fn, "__name__", str(fn))
        made.append((f"global {name}", archive({"model": records, "payload": Call(fn, *args)}, storages)))
        made.append((f"top-level global {name}", archive(Call(fn, *args), storages)))
    made += [("a list", archive([records], storages)), ("a tensor", archive(records[conv], storages)),
             ("int keys", archive({1: records[conv]}, storages)), ("empty dict", archive({}, storages))]
    # the stem's archive truncated, and with bytes flipped (in the pickle, the directory, the data)
    valid = archive(records, storages)
    for cut in np.linspace(1, len(valid) - 1, 40).astype(int):
        made.append((f"archive cut to {cut} bytes", valid[:cut]))
    rng = np.random.default_rng(0)
    pickle_at = valid.index(b"data.pkl") + 8
    for i in range(160):
        data = bytearray(valid)
        region = (pickle_at, pickle_at + 4000) if i % 3 == 0 else (0, len(valid))
        for at in rng.integers(*region, size=1 + i % 4):
            data[at] = rng.integers(0, 256)
        made.append((f"flipped bytes #{i}", bytes(data)))
    paths = []
    for i, (name, data) in enumerate(made):
        path = tmp_path / f"{i:03d}.pth"
        path.write_bytes(data)
        paths.append((name, path))
    return paths


CHILD = """
import sys
from kerascnn import models
from kerascnn.errors import KerascnnError
model = models.build("resnet18", (32, 32, 3), 10, image_size=32, weights="none")
for path in sys.argv[1:]:
    print("start", path, flush=True)
    try:
        models.load_weights(model, path)
        print("loaded", flush=True)
    except KerascnnError as exc:
        message = str(exc)
        assert "\\n" not in message, message
        print("refused", message, flush=True)
"""


def start_batch(paths: list[Path]) -> tuple[list[Path], subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return paths, subprocess.Popen([sys.executable, "-c", CHILD, *map(str, paths)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def finish_batch(paths: list[Path], child: subprocess.Popen) -> tuple[dict[Path, str], Path | None, str]:
    """Each path's outcome in the batch's child process; the case it died on (signal or traceback), if any."""
    out, err = child.communicate(timeout=600)
    outcomes, current = {}, None
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word == "start":
            current = Path(rest)
        elif word in ("loaded", "refused"):
            outcomes[current] = line
            current = None
    failed = current if child.returncode != 0 else None
    return outcomes, failed, f"exit {child.returncode}: {err[-2000:]}"


@pytest.mark.slow  # child processes that import Keras: CI runs it
def test_hostile_weights_files_load_or_are_refused_in_one_line_never_crash(tmp_path):
    named = cases(tmp_path)
    assert len(named) >= 300
    names = {path: name for name, path in named}
    pending, outcomes, crashes = [path for _, path in named], {}, []
    while pending:  # two children at a time, each a half; after a crash, the rest of its half again
        batches = [start_batch(pending[i::2]) for i in range(2) if pending[i::2]]
        for paths, child in batches:
            got, failed, why = finish_batch(paths, child)
            outcomes |= got
            if failed is not None:
                crashes.append(f"{names[failed]}: {why}")
                outcomes[failed] = "crashed"
            elif len(got) < len(paths):
                pytest.fail(f"a child stopped before its cases ran: {why}")
        pending = [p for p in pending if p not in outcomes]
    assert not crashes, crashes
    loaded = {names[p] for p, line in outcomes.items() if line.startswith("loaded")}
    assert {"valid", "torchvision reference checkpoint", "lightning", "ddp"} <= loaded
    # a foreign global anywhere refuses the file; only what the reader maps (OrderedDict, a parameter) loads
    assert not {n for n in loaded if n.startswith(("global", "top-level"))} - {"global OrderedDict",
                                                                               "global _rebuild_parameter"}, loaded
    refused = [line for line in outcomes.values() if line.startswith("refused")]
    assert len(refused) >= 200 and all(line.startswith(f"refused --weights {tmp_path}") for line in refused), [
        line for line in refused if not line.startswith(f"refused --weights {tmp_path}")]
