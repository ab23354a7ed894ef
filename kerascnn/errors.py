"""The one exception type for problems a user can fix (bad names, missing data, bad options)."""


class KerascnnError(Exception):
    """A user-facing error: its message is one line that names the problem and the fix; ``option`` is
    the `kerascnn.config.RunConfig` option it is about, if any (a study points to that option's line)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> KerascnnError:
    """Error for an unknown registry name (of option ``kind``: model, dataset), listing the valid ones."""
    return KerascnnError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}", option=kind)


class Terminated(KeyboardInterrupt):
    """SIGTERM, stopping the program as Ctrl-C does (see `stop_requested`)."""


# Set by the command lines' SIGINT/SIGTERM handlers to the exception to raise. The handler raises it
# at once too, but Python runs handlers wherever the main thread is, and an exception raised inside
# some C calls is swallowed (numpy's conversion of a JAX array during fit, for one); the training
# loop's `kerascnn.training.StopWhenAsked` raises it again at the next batch.
stop_requested: list[KeyboardInterrupt] = []


def request_stop(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM handler: stop as Ctrl-C does, here and (should this raise be lost) at the
    next batch, through `stop_requested`."""
    import signal

    exc = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    stop_requested.append(exc)
    if _raise_would_be_dropped(frame):
        return
    raise exc


def _raise_would_be_dropped(frame: object) -> bool:
    """Whether an exception raised in ``frame`` would be printed as "Exception ignored" and dropped:
    in a weakref callback (the innermost frame), or anywhere inside a gc callback (JAX registers
    one) or a finalizer (``__del__``). `stop_requested` raises it again at the next batch."""
    import gc

    code = getattr(frame, "f_code", None)
    if code is not None and code.co_filename.endswith(("weakref.py", "_weakrefset.py")):
        return True
    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None and getattr(frame, "f_code", None) is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False
