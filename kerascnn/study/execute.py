"""Running a study: each unfinished run in this process, in worker processes or as submitit
(SLURM) jobs, one loop over their futures for every engine; the summary rewritten as each ends."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from kerascnn import config
from kerascnn.errors import KerascnnError, request_stop
from kerascnn.study.plan import PlannedRun, Study, prepare_folder, run_config, select, state_of, write_plan
from kerascnn.study.summary import summarize, write_summary

log = logging.getLogger("kerascnn")


def execute_run(options: dict[str, Any], folder: str, resume: bool) -> str:
    """Run (or resume) one study run in this process: what workers and cluster jobs call. SIGINT
    and SIGTERM stop it as they stop the command lines (the run folder is marked interrupted)."""
    import threading

    from kerascnn.errors import stop_requested
    from kerascnn.runner import resume as resume_run
    from kerascnn.runner import run as start_run

    if threading.current_thread() is threading.main_thread():
        stop_requested.clear()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, request_stop)
    log.info("%s: %s", Path(folder).name, "resuming" if resume else "starting")
    if resume:
        return str(resume_run(folder))
    return str(start_run(config.RunConfig(**options)))


def _worker_init(threads: int, gpus: Any) -> None:
    """Give a worker process its share of the CPU threads, or one GPU of several."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if os.environ.get("KERAS_BACKEND", "torch") == "torch":
        import torch

        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")


def visible_gpus() -> list[str]:
    """The CUDA devices workers can be spread over, as ids for ``CUDA_VISIBLE_DEVICES``: the
    ones it already lists, else those ``nvidia-smi -L`` lists (any backend)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    import subprocess

    try:
        lines = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(lines) if line.startswith("GPU ")]


def run_study(study: Study, out: Path, *, workers: int = 1, engine: str = "local",
              engine_options: dict[str, str] | None = None, only: str | None = None) -> dict[str, Any]:
    """Run every unfinished run of ``study`` in ``out`` (resuming interrupted ones), then write
    the study's summary; return it. ``only`` runs one configuration (and what it depends on)."""
    prepare_folder(study, out)
    runs = select(study, only)
    write_plan(study, out)
    failed: dict[str, str] = {}
    try:
        dependencies = [r for r in runs if r.dependency]
        rest = [r for r in runs if not r.dependency]
        _run_batch(dependencies, out, workers, engine, engine_options or {}, failed, study)
        for run in dependencies:  # one running elsewhere has no model yet: what needs it waits for another call
            if run.name not in failed and state_of(run, out) != "finished":
                failed[run.name] = f"{run.name}: not finished (running elsewhere?); run the command again later"
        broken = {r.name for r in dependencies if r.name in failed}
        for run in rest:
            if run.upstream_run in broken:
                failed[run.name] = f"{run.name}: not run, its weights' run {run.upstream_run} failed"
        rest = [r for r in rest if r.upstream_run not in broken]
        _run_batch(rest, out, workers, engine, engine_options or {}, failed, study)
    finally:
        summary = summarize(study, out, failed)
        write_summary(study, out, summary)
    return summary


def _run_batch(runs: list[PlannedRun], out: Path, workers: int, engine: str, engine_options: dict[str, str],
               failed: dict[str, str], study: Study) -> None:
    jobs = []
    for run in runs:
        state = state_of(run, out)
        if state in ("finished", "elsewhere"):
            log.info("%s: %s", run.name, "finished already; skipped" if state == "finished" else
                     "running in another process; skipped")
            continue
        if state == "stale":  # started, but not one epoch finished: nothing of value to keep
            shutil.rmtree(out / run.name)
        jobs.append((run, state == "resumable"))
    if not jobs:
        return
    executor = executor_for(engine, workers, engine_options, out)
    futures = {executor.submit(execute_run, dataclasses.asdict(run_config(run, out)), str(out / run.name), resume): run
               for run, resume in jobs}
    try:
        for future in executor.completed(futures):
            run = futures[future]
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - one run's failure (out of memory, ...) is not the study's
                failed[run.name] = f"{run.name}: {executor.error_line(exc)}"
                log.warning("%s failed: %s", run.name, failed[run.name])
            write_summary(study, out, summarize(study, out, failed))
    except BaseException:
        executor.stop()
        raise
    executor.close()


def executor_for(engine: str, workers: int, engine_options: dict[str, str], out: Path) -> _InProcess:
    """The engine (``local``: this process, or ``workers`` processes; else submitit) calls go to."""
    if engine == "local":
        return _InProcess() if workers <= 1 else _Processes(workers)
    return _Submitit(engine, engine_options, out)


class _Deferred:
    """A call made when its result is first asked for (`_InProcess`'s future)."""

    def __init__(self, call: Callable[..., Any], args: tuple) -> None:
        self.call, self.args = call, args

    def result(self) -> Any:
        return self.call(*self.args)


class _InProcess:
    """Runs one at a time in this process, each when the loop reaches it. The engines' shared
    interface: ``submit``, ``completed`` (futures in the order they finish), ``error_line``, ``stop``
    (on an interrupt: what runs marks itself interrupted, what waits never starts), ``close``."""

    def submit(self, call: Callable[..., Any], *args: Any) -> Any:
        return _Deferred(call, args)

    def completed(self, futures: Iterable[Any]) -> Iterator[Any]:
        return iter(list(futures))

    def error_line(self, exc: BaseException) -> str:
        lines = str(exc).strip().splitlines()
        return lines[0] if lines else type(exc).__name__

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Processes(_InProcess):
    """``workers`` runs at a time in spawned worker processes (`concurrent.futures`), one GPU each
    when there are several, else the CPU's threads split between them."""

    def __init__(self, workers: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        gpus = visible_gpus()
        queue = None
        if len(gpus) > 1:
            queue = context.Manager().Queue()
            for i in range(workers):
                queue.put(gpus[i % len(gpus)])
        threads = max(1, (os.cpu_count() or 1) // workers)
        self.pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                        initargs=(threads, queue))

    def submit(self, call: Callable[..., Any], *args: Any) -> Any:
        return self.pool.submit(call, *args)

    def completed(self, futures: Iterable[Any]) -> Iterator[Any]:
        from concurrent.futures import as_completed

        return as_completed(list(futures))

    def stop(self) -> None:
        processes = list(getattr(self.pool, "_processes", {}).values())  # the executor has no public handle
        self.pool.shutdown(wait=False, cancel_futures=True)  # queued runs never start
        for process in processes:
            process.terminate()  # SIGTERM: the run in it marks itself interrupted
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()

    def close(self) -> None:
        self.pool.shutdown()


class _Submitit(_InProcess):
    """submitit jobs: SLURM (``engine`` ``slurm``) or its local executor (``submitit-local``,
    subprocesses on this machine)."""

    def __init__(self, engine: str, engine_options: dict[str, str], out: Path) -> None:
        try:
            import submitit
        except ImportError:
            raise KerascnnError(f"--engine {engine} needs submitit: pip install 'kerascnn[slurm]'") from None
        self.executor = submitit.AutoExecutor(folder=out / "submitit",
                                              cluster="local" if engine == "submitit-local" else "slurm")
        options: dict[str, Any] = {k: int(v) if str(v).isdigit() else v for k, v in engine_options.items()}
        options.setdefault("timeout_min", 24 * 60)
        self.executor.update_parameters(**options)
        self.jobs: list[Any] = []

    def submit(self, call: Callable[..., Any], *args: Any) -> Any:
        self.jobs.append(self.executor.submit(call, *args))
        return self.jobs[-1]

    def error_line(self, exc: BaseException) -> str:  # submitit wraps the run's error; its last line is the run's
        lines = str(exc).strip().splitlines()
        return lines[-1] if lines else type(exc).__name__

    def stop(self) -> None:
        for job in self.jobs:
            job.cancel(check=False)  # SLURM sends SIGTERM: each run marks itself interrupted
