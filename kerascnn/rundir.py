"""A run folder's life: choosing its name, refusing to write over existing work (one check for
every file and folder kerascnn writes), creating it and writing its JSON files."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kerascnn.errors import KerascnnError

log = logging.getLogger("kerascnn")


def slug(text: str) -> str:
    """A file-name-safe version of a dataset or model name (``folder:/x/pets`` -> ``folder-pets``)."""
    prefix, _, rest = text.partition(":")
    if rest:
        text = f"{prefix}-{Path(rest.rstrip('/')).stem or 'data'}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def check_free(path: str | Path, option: str, folder: bool = True) -> Path:
    """Raise unless ``path`` can be written without losing anything: absent (or, for a ``folder``,
    an empty folder) with its parent folder in place for a file. ``option`` names it in the error."""
    path = Path(path).expanduser()
    if path.exists() and not (folder and path.is_dir() and not any(path.iterdir())):
        if folder and not path.is_dir():
            what = "is a file"
        else:
            what = "already exists and is not empty" if folder else "already exists"
        raise KerascnnError(f"{option} {str(path)!r} {what}; choose another {option}")
    if not folder and not path.parent.is_dir():
        raise KerascnnError(f"{option} {str(path)!r}: folder {str(path.parent)!r} does not exist; create it or "
                            f"choose another {option}")
    if not folder:  # before any work is done for it: a read-only or full place fails now, not at the end
        try:
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".kerascnn-write-check-"):
                pass
        except OSError as exc:
            raise KerascnnError(f"{option} {str(path)!r}: cannot write in {str(path.parent)!r} ({exc.strerror}); "
                                f"choose another {option}") from None
    return path


def new_path(out: str | Path | None, runs_dir: str | Path, *names: str, option: str = "--out") -> Path:
    """The folder a run (or study) will write: ``out`` if it is free, else with ``out`` None a
    fresh ``RUNS_DIR/<names>-<timestamp>[-N]``. Nothing is created."""
    if out:
        return check_free(out, option)
    base = Path(runs_dir).expanduser() / "-".join([*map(slug, names), time.strftime("%Y%m%d-%H%M%S")])
    for n in range(1, 1000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        if not path.exists():
            return path
    raise KerascnnError(f"could not find a free folder name next to {base}")


def create(out: str | Path | None, runs_dir: str | Path, *names: str, option: str = "--out") -> Path:
    """Create and return the folder `new_path` chooses (an empty ``out`` is taken as it is)."""
    path = new_path(out, runs_dir, *names, option=option)
    try:
        path.mkdir(parents=True, exist_ok=bool(out))
    except OSError as exc:
        raise KerascnnError(f"cannot create the folder {str(path)!r} ({exc.strerror}); choose another "
                            f"{option if out else '--runs-dir'}") from None
    return path


def write_whole(target: Path, write: Callable[[Path], object], size: int = 0) -> None:
    """Replace ``target`` with what ``write`` writes to a partial file beside it (same suffix), as a whole:
    an interruption never leaves half a file. Unless its disk has room for ``size`` bytes and a margin
    (checked first: HDF5 crashed the process at exit after a write that ran out of space), or if the write
    fails, one `KerascnnError` names the file; the partial file is removed."""
    partial = target.with_name(f".partial-{target.name}")
    free = shutil.disk_usage(target.parent).free
    if free < size * 1.25 + 2**20:
        raise KerascnnError(f"cannot write {target}: it needs about {size * 1.25 / 2**20 + 1:.1f} MiB and its disk "
                            f"has {free / 2**20:.1f} MiB free; free space or choose another --out")
    try:
        write(partial)
        os.replace(partial, target)
        return
    except OSError as exc:
        reason = (exc.strerror or str(exc)).splitlines()[0]
    finally:  # whatever stopped the write (Ctrl-C included), no partial file stays
        partial.unlink(missing_ok=True)
    raise KerascnnError(f"cannot write {target} ({reason}); free space on its disk or choose another --out")


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` as JSON, whole (`write_whole`)."""
    text = json.dumps(data, indent=2) + "\n"
    write_whole(Path(path), lambda partial: partial.write_text(text), len(text))


def read_history(run_dir: str | Path) -> dict[str, list[float]]:
    """A run folder's ``history.csv`` as lists per column (``epoch`` included); empty if it has none."""
    import csv

    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return {}
    rows = list(csv.DictReader(path.open()))
    return {key: [float(row[key]) if row[key] not in ("", None) else float("nan") for row in rows]
            for key in (rows[0] if rows else {})}


STATUS_FILE = "status.json"
STATUSES = ("running", "interrupted", "failed", "finished", "pruned")
DONE = ("finished", "pruned")  # evaluated and reported; pruned: a search stopped it early (`kerascnn.study.search`)


def mark(run_dir: str | Path, status: str, **details: Any) -> None:
    """Record a run folder's state in ``status.json``: ``status`` (one of `STATUSES`), when, the
    epochs in ``history.csv`` so far, and ``details`` (an error message, say)."""
    run_dir = Path(run_dir)
    history = run_dir / "history.csv"
    epochs = max(0, len(history.read_text().splitlines()) - 1) if history.is_file() else 0
    write_json(run_dir / STATUS_FILE, {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                       "epochs_done": epochs, "host": socket.gethostname(), **details})


def mark_stopped(run_dir: str | Path, exc: BaseException) -> None:
    """Mark a run that ``exc`` stopped: interrupted (Ctrl-C, or SIGTERM as `experiments.cli`
    turns it into KeyboardInterrupt), else failed with the error's whole message. A status that
    cannot be written (a full disk) is a warning: the error that stopped the run is the one to report."""
    try:
        if isinstance(exc, KeyboardInterrupt):
            mark(run_dir, "interrupted")
        else:
            mark(run_dir, "failed", error=" ".join(str(exc).split()) or type(exc).__name__)
    except KerascnnError as failed:
        log.warning("%s", failed)


def read_status(run_dir: str | Path) -> str:
    """A run folder's state (`STATUSES`): ``running`` only while the process that marked it (its pid
    on its host) is alive, else ``interrupted`` (killed without a word, ``kill -9``). A folder from
    before status files is ``finished`` when it has ``metrics.json``, else ``unknown``."""
    run_dir = Path(run_dir)
    try:
        status = json.loads((run_dir / STATUS_FILE).read_text())
        state = status["status"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        return "finished" if (run_dir / "metrics.json").is_file() else "unknown"
    if state == "running" and "pid" in status and not _marker_alive(status):
        return "interrupted"
    return state


def running_elsewhere(run_dir: str | Path) -> bool:
    """Whether the process that marked ``run_dir`` running is alive (and is not this one); a
    process on another machine (a cluster job) counts as alive."""
    try:
        status = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError, TypeError, UnicodeDecodeError):
        return False
    here = status.get("host", socket.gethostname()) == socket.gethostname()
    return "pid" in status and not (here and status["pid"] == os.getpid()) and _marker_alive(status)


def _marker_alive(status: dict[str, Any]) -> bool:
    """Whether the process whose pid ``status`` records may still be running (`process_alive`); an
    unreadable pid is not."""
    try:
        pid = int(status["pid"])
    except (TypeError, ValueError):
        return False
    return process_alive(status.get("host", socket.gethostname()), pid)


def process_alive(host: str, pid: int) -> bool:
    """Whether process ``pid`` on ``host`` may still be running: it is on another host (a cluster
    job), it is this process, or its pid is alive."""
    if host != socket.gethostname() or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
