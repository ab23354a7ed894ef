"""Decoded-image cache: image-file splits decoded once, at the working size, then read as arrays.

``--cache`` (`kerascnn.config.CACHE_MODES`) chooses where the decoded pixels live:

- ``ram``: a NumPy array in this process;
- ``disk``: a memory-mapped ``.npy`` file under ``$KERASCNN_CACHE`` (default ``~/.cache/kerascnn``),
  ``decoded/<key>.npy`` with ``<key>.json`` beside it, which later runs and a study's runs reuse;
- ``auto`` (the default): an existing disk entry for the same key, else RAM when the splits take at
  most half of the available memory, else disk;
- ``none``: files are decoded in every epoch by the pipeline's threads.

The key hashes the file list (path, size, modification time of each file), the decoding size and
`DECODER_VERSION`: a changed file, list or size is a new entry. The first pass decodes in threads
writing straight into the cache: Pillow releases the GIL while it decodes and resizes, and on 2 CPU
cores 2 threads decoded 799 images/s at 224 against 420 in one thread and 210 in 2 processes, whose
pixels are pickled back. A file that fails to decode is marked unreadable in
the entry and left out of every batch, with one warning (`kerascnn.data.pipeline.Batches`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerascnn.data.images import read_image

log = logging.getLogger("kerascnn")

DECODER_VERSION = 1  # bump when `read_image`'s pixels change: older cache entries stop matching
CHUNK = 64  # images per task of the decoding pool


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
    """A hash of the files (path, size, modification time), the decoding ``shape`` and the decoder."""
    digest = hashlib.sha1(f"kerascnn-decoded v{DECODER_VERSION} {tuple(shape)}\n".encode())
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
    (default: one per CPU, at most 16). Returns the readable mask (False: the file failed to decode,
    its pixels stay zero)."""
    paths = [str(p) for p in paths]
    readable = np.ones(len(paths), bool)

    def decode(start: int) -> None:
        for i in range(start, min(start + CHUNK, len(paths))):
            try:
                pixels[i] = read_image(paths[i], shape)
            except Exception:  # noqa: BLE001 - any failure to decode marks the file unreadable
                readable[i] = False

    threads = threads or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decode, range(0, len(paths), CHUNK)))
    return readable


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``; else half the RAM)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 0


def _read_entry(key: str) -> Decoded | None:
    meta_path = cache_dir() / f"{key}.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        pixels = np.load(cache_dir() / f"{key}.npy", mmap_mode="r")
    except (OSError, ValueError) as exc:
        log.warning("ignoring damaged cache entry %s (%s)", meta_path, exc)
        return None
    readable = np.ones(len(pixels), bool)
    readable[meta["unreadable"]] = False
    return Decoded(pixels, readable, str(cache_dir() / f"{key}.npy"))


def _write_entry(key: str, paths: np.ndarray, shape: tuple[int, int, int], threads: int | None) -> Decoded:
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{key}.npy"
    partial = folder / f"{key}.{os.getpid()}.partial.npy"  # concurrent writers never share a file
    try:
        pixels = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(paths), *shape))
        readable = decode_into(pixels, paths, shape, threads)
        pixels.flush()
        del pixels
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    meta = {"files": len(paths), "shape": list(shape), "unreadable": np.flatnonzero(~readable).tolist(),
            "decoder_version": DECODER_VERSION, "first": str(paths[0]) if len(paths) else None}
    tmp = folder / f"{key}.{os.getpid()}.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, folder / f"{key}.json")  # written last: an entry with its JSON is complete
    return Decoded(np.load(final, mmap_mode="r"), readable, str(final))


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
        on_disk = all((cache_dir() / f"{k}.json").is_file() for k in keys.values())
        mode = "disk" if on_disk or size > available_memory() // 2 else "ram"
    start, decoded_now = time.perf_counter(), 0
    for name, split in streamed.items():
        entry = _read_entry(keys[name]) if mode == "disk" else None
        if entry is None:
            log.info("decoding %d %s images at %dx%d into the %s cache", len(split), name, shape[0], shape[1], mode)
            decoded_now += len(split)
            if mode == "disk":
                entry = _write_entry(keys[name], split.paths, shape, threads)
            else:
                pixels = np.empty((len(split), *shape), np.uint8)
                entry = Decoded(pixels, decode_into(pixels, split.paths, shape, threads), "ram")
        split.decoded = entry
    where = "in RAM" if mode == "ram" else f"in {cache_dir()}"
    seconds = time.perf_counter() - start
    return (f"decoded images cached {where} ({size / 2**30:.2f} GiB; {decoded_now} decoded now"
            f"{f' in {seconds:.0f} s' if decoded_now else ', all reused'})")
