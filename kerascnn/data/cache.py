"""Decoded-image cache: image-file splits decoded once, at the working size, then read as arrays.

``--cache`` (`kerascnn.config.RunConfig.cache`) chooses where the decoded pixels live:

- ``ram``: a NumPy array in this process;
- ``disk``: a memory-mapped ``.npy`` file under ``$KERASCNN_CACHE`` (default ``~/.cache/kerascnn``),
  ``decoded/<key>.npy`` with ``<key>.json`` beside it, which later runs and a study's runs reuse;
- ``auto`` (the default): disk when an entry for one of the splits exists there, else RAM when the
  splits take at most half of the available memory, else disk;
- ``none``: files are decoded in every epoch by the pipeline's threads.

The key hashes the file list (path, size, modification time of each file), the decoding size,
`DECODER_VERSION` and Pillow's version: a changed file, list or size is a new entry. The first pass
decodes in threads writing straight into the cache (Pillow releases the GIL while it decodes and
resizes; docs/design/input-pipeline.md). A file that fails to decode is
marked unreadable in the entry and left out of every batch, with one warning
(`kerascnn.data.pipeline.Batches`). One process writes an entry while others wanting it wait on a
lock file and then read it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from kerascnn.data.images import read_image
from kerascnn.errors import KerascnnError, stop_requested

log = logging.getLogger("kerascnn")

DECODER_VERSION = 1  # bump when `read_image`'s pixels change: older cache entries stop matching
CHUNK = 64  # images per task of the decoding pool
# what Pillow raises for a file that is not a decodable image (OSError covers truncated and unidentified)
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass
class Decoded:
    """The decoded pixels of a split's files: ``pixels`` (n, h, w, c) uint8, an array or a memory
    map; ``readable`` False where a file failed to decode (its pixels are zeros); ``where`` is
    ``"ram"`` or the cache file."""

    pixels: np.ndarray
    readable: np.ndarray
    where: str


def cache_dir() -> Path:
    """The folder of disk entries: ``$KERASCNN_CACHE/decoded`` (default ``~/.cache/kerascnn/decoded``)."""
    return Path(os.environ.get("KERASCNN_CACHE") or Path.home() / ".cache" / "kerascnn").expanduser() / "decoded"


def cache_key(paths: np.ndarray | list[str], shape: tuple[int, int, int]) -> str:
    """A hash of the files (path, size, modification time), the decoding ``shape``, the decoder and
    Pillow's version (a new libjpeg may decode other pixels)."""
    digest = hashlib.sha1(f"kerascnn-decoded v{DECODER_VERSION} pillow {PIL.__version__} {tuple(shape)}\n".encode())
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:24]


def decode_into(pixels: np.ndarray, paths: np.ndarray | list[str], shape: tuple[int, int, int],
                threads: int | None = None) -> np.ndarray:
    """Decode ``paths`` at ``shape`` into ``pixels`` (n, h, w, c) uint8 with ``threads`` threads
    (default: one per CPU, at most 16). Returns the readable mask (False: the file is not an image
    Pillow can decode; its pixels stay zero). Other errors (out of memory, say) propagate."""
    paths = [str(p) for p in paths]
    readable = np.ones(len(paths), bool)

    def decode(start: int) -> None:
        for i in range(start, min(start + CHUNK, len(paths))):
            if stop_requested:  # Ctrl-C or SIGTERM: the chunks under way stop at their next image
                return
            try:
                pixels[i] = read_image(paths[i], shape)
            except UNREADABLE:
                readable[i] = False

    pool = ThreadPoolExecutor(threads or min(16, os.cpu_count() or 1))
    try:
        for _ in pool.map(decode, range(0, len(paths), CHUNK)):
            if stop_requested:  # a Ctrl-C whose raise a callback swallowed
                raise stop_requested[-1]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C: the running chunks stop at their next image
    return readable


def available_memory() -> int:
    """Bytes of memory available to new allocations: Linux ``MemAvailable``, capped by the
    container's cgroup limit (v2 or v1) less its usage; elsewhere half the RAM."""
    available = 0
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
        except (ValueError, OSError, AttributeError):
            return 0
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         (f"{v1}limit_in_bytes", f"{v1}usage_in_bytes")):
        try:
            available = min(available, int(Path(limit).read_text()) - int(Path(usage).read_text()))
        except (OSError, ValueError):  # no such cgroup, or "max" (no limit)
            continue
    return max(available, 0)


def _read_entry(key: str, paths: np.ndarray, shape: tuple[int, int, int]) -> Decoded | None:
    """The disk entry ``key`` if it is complete, holds ``paths``' images at ``shape`` and none of the
    files it recorded as unreadable decodes now (a passing I/O error must not drop them for good)."""
    count = len(paths)
    meta_path, data_path = cache_dir() / f"{key}.json", cache_dir() / f"{key}.npy"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        pixels = np.load(data_path, mmap_mode="r")
        if pixels.shape != (count, *shape) or pixels.dtype != np.uint8:
            raise ValueError(f"holds {pixels.dtype} {pixels.shape}, not uint8 {(count, *shape)}")
        readable = np.ones(count, bool)
        readable[np.asarray(meta["unreadable"], np.int64)] = False
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        log.warning("ignoring damaged cache entry %s (%s); it will be written again", meta_path, exc)
        return None
    retry = np.zeros((1, *shape), np.uint8)
    if any(decode_into(retry, [paths[i]], shape, threads=1)[0] for i in np.flatnonzero(~readable)):
        log.warning("a file cache entry %s recorded as unreadable decodes now; it will be written again", meta_path)
        return None
    with contextlib.suppress(OSError):
        os.utime(meta_path)  # its last use, for `python -m experiments.cache --unused-for`
    return Decoded(pixels, readable, str(data_path))


def _amount(size: int) -> str:
    """A number of bytes for a person: MiB below a GiB, else GiB."""
    return f"{size / 2**20:.1f} MiB" if size < 2**30 else f"{size / 2**30:.2f} GiB"


@contextlib.contextmanager
def _locked(key: str):
    """Hold ``<key>.lock`` in the cache folder (POSIX; nothing elsewhere): one writer per entry, on
    every host sharing the folder, while the others wait and then read what it wrote."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(cache_dir() / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _disk_entry(key: str, paths: np.ndarray, shape: tuple[int, int, int],
                threads: int | None) -> tuple[Decoded, bool]:
    """The disk entry ``key`` of ``paths``, and whether it was decoded now: read under the entry's
    lock if it is there (another process may be writing it), else decoded into it."""
    folder = cache_dir()
    size = len(paths) * int(np.prod(shape))
    with _locked(key):
        entry = _read_entry(key, paths, shape)
        if entry is not None:
            return entry, False
        log.info("decoding %d images at %dx%d into %s (python -m experiments.cache lists and removes entries)",
                 len(paths), shape[0], shape[1], folder)
        for stale in folder.glob(f"{key}.*.partial*"):  # left by a writer that was killed: we hold the lock
            stale.unlink(missing_ok=True)
        free = shutil.disk_usage(folder).free
        if free < size + 2**28:
            raise KerascnnError(f"the decoded-image cache needs {_amount(size + 2**28)} in {folder} (the images "
                                f"and 256 MiB to spare) and {_amount(free)} are free; free some, point "
                                "$KERASCNN_CACHE elsewhere, or pass --cache ram or --cache none")
        partial = folder / f"{key}.{uuid.uuid4().hex}.partial.npy"
        meta_tmp = partial.with_suffix(".json")
        try:
            pixels = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(paths), *shape))
            readable = decode_into(pixels, paths, shape, threads)
            pixels.flush()
            del pixels
            os.replace(partial, folder / f"{key}.npy")
            meta_tmp.write_text(json.dumps({
                "files": len(paths), "shape": list(shape), "unreadable": np.flatnonzero(~readable).tolist(),
                "decoder_version": DECODER_VERSION, "pillow": PIL.__version__,
                "first": str(paths[0]) if len(paths) else None}))
            os.replace(meta_tmp, folder / f"{key}.json")  # written last: an entry with its JSON is complete
        finally:
            partial.unlink(missing_ok=True)
            meta_tmp.unlink(missing_ok=True)
    return Decoded(np.load(folder / f"{key}.npy", mmap_mode="r"), readable, str(folder / f"{key}.npy")), True


@dataclass
class Entry:
    """One disk entry: its ``key``, ``files`` decoded at ``shape``, ``bytes`` on disk, ``last_used``
    (a POSIX time) and the ``first`` file's path (what the entry is of); ``complete`` False while a
    write is under way or after one was killed (no JSON, or only a partial file)."""

    key: str
    files: int
    shape: tuple[int, ...]
    bytes: int
    last_used: float
    first: str | None
    complete: bool


def entries() -> list[Entry]:
    """The disk entries in `cache_dir`, most recently used first."""
    folder = cache_dir()
    found: dict[str, Entry] = {}
    for path in folder.glob("*.*") if folder.is_dir() else []:
        if path.suffix == ".lock":  # kept: a process may be waiting on it
            continue
        key = path.name.split(".", 1)[0]
        entry = found.setdefault(key, Entry(key, 0, (), 0, 0.0, None, False))
        with contextlib.suppress(OSError):
            stat = path.stat()
            entry.bytes += stat.st_size
            entry.last_used = max(entry.last_used, stat.st_mtime)
        if path.name == f"{key}.json":
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                meta = json.loads(path.read_text())
                entry.files, entry.shape, entry.first = int(meta["files"]), tuple(meta["shape"]), meta.get("first")
                entry.complete = (folder / f"{key}.npy").is_file()
    return sorted(found.values(), key=lambda e: -e.last_used)


def remove(entry: Entry) -> None:
    """Delete ``entry``'s files under its lock: a process writing or reading it is waited for, one
    that memory-mapped it keeps its pixels until it exits. The empty lock file stays (another process
    may be waiting on it)."""
    with _locked(entry.key):
        for path in cache_dir().glob(f"{entry.key}.*"):
            if path.suffix != ".lock":
                path.unlink(missing_ok=True)


def decode_splits(splits: dict[str, object], shape: tuple[int, int, int], mode: str,
                  threads: int | None = None) -> str:
    """Attach a `Decoded` to each streamed `kerascnn.data.Split` in ``splits`` (name -> split) as
    ``mode`` says; returns a sentence saying where the pixels went ("" when nothing was cached)."""
    streamed = {name: s for name, s in splits.items() if getattr(s, "streamed", False) and len(s)}
    if mode == "none" or not streamed:
        return ""
    keys = {name: cache_key(s.paths, shape) for name, s in streamed.items()}
    size = sum(len(s) for s in streamed.values()) * int(np.prod(shape))
    if mode == "auto":
        on_disk = any((cache_dir() / f"{k}.json").is_file() for k in keys.values())
        mode = "disk" if on_disk or size > available_memory() // 2 else "ram"
    if mode == "disk":
        try:
            cache_dir().mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KerascnnError(f"the decoded-image cache cannot use {cache_dir()} ({exc.strerror}); point "
                                "$KERASCNN_CACHE at a folder, or pass --cache ram or --cache none") from None
    start, decoded_now = time.perf_counter(), 0
    for name, split in streamed.items():
        if mode == "disk":
            split.decoded, decoded = _disk_entry(keys[name], split.paths, shape, threads)
        else:
            log.info("decoding %d %s images at %dx%d into RAM", len(split), name, shape[0], shape[1])
            pixels = np.empty((len(split), *shape), np.uint8)
            split.decoded, decoded = Decoded(pixels, decode_into(pixels, split.paths, shape, threads), "ram"), True
            pixels.flags.writeable = False  # batches get copies; nothing may write into the cache
        decoded_now += len(split) if decoded else 0
    where = "in RAM" if mode == "ram" else f"in {cache_dir()}"
    seconds = time.perf_counter() - start
    return (f"decoded images cached {where} ({size / 2**30:.2f} GiB; {decoded_now} decoded now"
            f"{f' in {seconds:.0f} s' if decoded_now else ', all reused'})")
