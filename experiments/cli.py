"""What every command shares: ``--backend`` chosen before Keras is imported, one-line errors."""

from __future__ import annotations

import argparse
import errno
import importlib.util
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from kerascnn.errors import KerascnnError, Terminated, request_stop, stop_requested

BACKENDS = ("torch", "jax", "tensorflow")  # each is also the name of the package it needs


class Parser(argparse.ArgumentParser):
    """argparse with whole option names only (``--epoch`` is not ``--epochs``) and usage errors as
    one line that points to ``--help``."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--debug``."""
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (default: $KERAS_BACKEND, else torch); set before Keras is imported")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def select_backend(name: str | None) -> str:
    """Set ``KERAS_BACKEND`` (before Keras is imported) and check that the backend is installed."""
    if name:
        if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != name:
            raise KerascnnError(f"--backend {name} came after Keras was imported with another backend")
        os.environ["KERAS_BACKEND"] = name
    backend = os.environ.setdefault("KERAS_BACKEND", "torch")
    if backend not in BACKENDS:
        raise KerascnnError(f"KERAS_BACKEND={backend!r} is not supported; use one of {', '.join(BACKENDS)}")
    if importlib.util.find_spec(backend) is None:
        raise KerascnnError(f"backend {backend!r} is not installed; pip install 'kerascnn[{backend}]'")
    return backend


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each message (not as it was when logging was set up)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


def setup_logging() -> None:
    """kerascnn's messages on stderr: progress plainly, warnings prefixed."""
    logger = logging.getLogger("kerascnn")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(_Formatter())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(body: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
         argv: list[str] | None = None, known_only: bool = False) -> int:
    """Parse ``argv`` (kept as ``args.argv``; ``known_only`` leaves unknown options to ``body``),
    choose the backend (for commands with ``--backend``), run ``body``.

    A `KerascnnError` becomes one line on stderr and exit status 2 (``--debug`` shows the traceback).
    Ctrl-C and SIGTERM stop the same way (a run folder is marked interrupted): status 130 and 143.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_known_args(argv)[0] if known_only else parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, one line already printed)
        return int(exc.code or 0)
    args.argv = argv
    setup_logging()
    handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous = {s: signal.signal(s, request_stop) for s in handled}
    stop_requested.clear()
    try:
        if hasattr(args, "backend"):  # commands without --backend do not use Keras
            select_backend(args.backend)
        return body(args) or 0
    except KerascnnError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # a usage error of options parsed in body (a study's run options)
        return int(exc.code or 0)
    except OSError as exc:
        if args.debug or exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG):
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot write{where} ({exc.strerror}); free space on its disk or choose another --out",
              file=sys.stderr)
        return 2
    except Terminated:
        print("terminated (SIGTERM); a run folder in progress is marked interrupted", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted; a run folder in progress is marked interrupted", file=sys.stderr)
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

