"""Studies: a comparison of training strategies from one TOML file, run as ordinary run folders
inside one study folder, resumable, and summarised with intervals, selection on validation and
paired tests.

A study file holds shared settings (any `RunConfig` field, as ``experiments.run``'s long option
names with ``_`` or ``-``; ``"default"`` for the dataset's or model's own default), ``seeds`` and
``grid.KEY = [...]`` axes, and ``[[config]]`` tables that override them. A ``fold`` axis, like
``seeds``, repeats a configuration, as a ``split_seed`` axis does; every other axis makes
configurations. ``weights = "@NAME"`` fine-tunes from configuration NAME's model (a dependency, run
first, not a row): each replicate from its own run of NAME (seed k from NAME's seed k), unless
``share = ["NAME"]`` trains NAME once for all of them. See ``experiments/studies/*.toml``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerascnn import config, rundir
from kerascnn.errors import KerascnnError, request_stop
from kerascnn.reports import markdown_text, percent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("kerascnn")
BUNDLED = Path(__file__).resolve().parents[1] / "experiments" / "studies"
REPEAT_AXES = ("fold", "split_seed")  # like seeds: repeats of one configuration, paired across configurations
NOT_IN_STUDIES = ("out", "runs_dir", "seed")  # the study sets these


def run_fields() -> tuple[str, ...]:
    """The settings a study file may give: every `RunConfig` option the study does not set itself."""
    return tuple(name for name in config.options() if name not in NOT_IN_STUDIES)


def is_hyper_parameter(name: str) -> bool:
    """Whether axis ``name`` tunes a strategy rather than makes another one (`kerascnn.config.Option.hyper`):
    configurations that differ only in these are one strategy, whose best setting on validation is chosen."""
    return name in config.hyper_parameters()


SUMMARY = ("accuracy", "macro_f1", "weighted_f1")
STUDY_FILES = ("study.json", "study.md", "comparison.png", "study.toml")


@dataclass
class PlannedRun:
    """One run of a study: its folder name, the configuration it belongs to and its settings."""

    name: str
    config: str  # the [[config]] table's name
    setting: dict[str, Any]  # its values on the study's axes (repeat axes included)
    seed: int
    options: dict[str, Any]  # RunConfig fields (weights "@NAME" until the dependency has run)
    table: int = 0  # which [[config]] of the file
    upstream_run: str | None = None  # the folder of the run its "@NAME" weights come from
    dependency: bool = False  # another configuration fine-tunes from it: run first, not a row

    @property
    def configuration(self) -> str:
        """The row it counts towards: the config's name and its non-repeat axis values."""
        values = [f"{k}={_text(v)}" for k, v in self.setting.items() if k not in REPEAT_AXES]
        return self.config + (f" [{', '.join(values)}]" if values else "")

    @property
    def group(self) -> str:
        """Its strategy: the configuration less its hyper-parameter axes."""
        values = [f"{k}={_text(v)}" for k, v in self.setting.items()
                  if k not in REPEAT_AXES and not is_hyper_parameter(k)]
        return self.config + (f" [{', '.join(values)}]" if values else "")

    @property
    def replicate(self) -> tuple[int, ...]:
        """What pairs it with runs of other configurations: its seed and repeat-axis values."""
        return (self.seed, *(self.setting.get(k, 0) for k in REPEAT_AXES))

    @property
    def upstream(self) -> str | None:
        weights = str(self.options.get("weights") or "")
        return weights[1:] if weights.startswith("@") else None


@dataclass
class Study:
    """A parsed study file: its runs in the order they run (dependencies first)."""

    name: str
    path: Path
    text: str
    runs: list[PlannedRun] = field(default_factory=list)


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def find_study_file(source: str) -> Path:
    """``source`` itself if it is a file, else the bundled ``experiments/studies/<source>.toml``."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    bundled = BUNDLED / f"{source}.toml"
    if "/" not in source and bundled.is_file():
        return bundled
    names = ", ".join(sorted(p.stem for p in BUNDLED.glob("*.toml")))
    raise KerascnnError(f"no study file {source!r}; give a .toml file or a bundled study: {names}")


def _line(text: str, key: str, table: int | None) -> int:
    """The line (1-based) where ``key`` is set, in the ``table``-th ``[[config]]`` (None: before any)."""
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if re.match(r"\s*\[\[\s*config\s*\]\]", line)]
    start = 0 if table is None else headers[table] if table < len(headers) else 0
    end = (headers[0] if headers else len(lines)) if table is None else \
        (headers[table + 1] if table + 1 < len(headers) else len(lines))
    leaf = key.split(".")[-1]
    for i in range(start, end):
        if re.match(rf"\s*(grid\s*\.\s*)?[\"']?{re.escape(leaf)}[\"']?\s*=", lines[i]):
            return i + 1
    return _line(text, key, None) if table is not None else start + 1  # a shared setting


def load_study(source: str, check: bool = True) -> Study:
    """Parse and check a study file (a path or a bundled name) into its planned runs; with ``check``
    every run's settings are checked here (`kerascnn.runner.resolve_config`, which also looks for
    the data), before anything trains."""
    path = find_study_file(source)
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KerascnnError(f"{path}: {exc}") from None
    where = lambda key, table=None: f"{path.name} line {_line(text, key, table)}"  # noqa: E731
    shared = {k.replace("-", "_"): v for k, v in data.items() if k not in ("config", "grid", "share")}
    tables = data.get("config")
    if not isinstance(tables, list) or not tables:
        raise KerascnnError(f"{path.name}: no [[config]] tables; a study compares at least one configuration")
    study = Study(str(shared.pop("name", path.stem)), path, text)
    names = [t.get("name") for t in tables]
    planned: list[PlannedRun] = []
    tables_seen: dict[str, tuple[int, dict[str, Any], dict[str, list], bool]] = {}
    allowed = run_fields()
    for index, table in enumerate(tables):
        name = table.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise KerascnnError(f"{where('name', index)}: each [[config]] needs a name of letters, digits, "
                                f"'_', '.', '-', got {name!r}")
        if names.count(name) > 1:
            raise KerascnnError(f"{where('name', index)}: config name {name!r} is used twice")
        for axes in (data.get("grid", {}), table.get("grid", {})):
            if not isinstance(axes, dict):
                raise KerascnnError(f"{where('grid', index)}: grid must be a table of lists (grid.lr = [...])")
        own = {k.replace("-", "_"): v for k, v in table.items() if k not in ("name", "grid")}
        grid = {**{k.replace("-", "_"): v for k, v in data.get("grid", {}).items()},
                **{k.replace("-", "_"): v for k, v in table.get("grid", {}).items()}}
        settings = {k: v for k, v in {**shared, **own}.items() if v != "default"}
        seeds = settings.pop("seeds", [0])
        for key in [*settings, *grid]:
            if key not in allowed:
                hint = "use seeds = [...]" if key == "seed" else "keys are experiments.run's long option names"
                raise KerascnnError(f"{where(key, index if key in own or key in table.get('grid', {}) else None)}: "
                                    f"unknown setting {key!r}; {hint}")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise KerascnnError(f"{where(key, index)}: grid.{key} must be a non-empty list, got {values!r}")
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
            raise KerascnnError(f"{where('seeds', index)}: seeds must be a non-empty list of integers >= 0")
        settings.setdefault("split_seed", 0)
        tables_seen[name] = (index, settings, grid, "seeds" in own)
        planned += _expand(name, index, settings, grid, seeds, planned, where)
    shared_dependencies = data.get("share", [])
    if not isinstance(shared_dependencies, list) or not all(n in names for n in shared_dependencies):
        raise KerascnnError(f"{where('share')}: share must list config names (share = [\"pretrain\"]); "
                            f"configs: {', '.join(names)}")
    upstreams: dict[str, list[PlannedRun]] = {}  # dependency config -> the runs that fine-tune from it
    for run in planned:
        upstream = run.upstream
        if upstream is None:
            continue
        if upstream not in names or upstream == run.config:
            raise KerascnnError(f"{where('weights', run.table)}: weights {run.options['weights']!r} names no "
                                f"other config; configs: {', '.join(names)}")
        upstreams.setdefault(upstream, []).append(run)
    for name in shared_dependencies:
        if name not in upstreams:
            raise KerascnnError(f"{where('share')}: share names {name!r}, which no config fine-tunes from")
    for upstream, dependents in upstreams.items():
        index, settings, grid, own_seeds = tables_seen[upstream]
        if str(settings.get("weights", "")).startswith("@") or any(
                str(v).startswith("@") for v in grid.get("weights", [])):
            raise KerascnnError(f"{where('weights', dependents[0].table)}: {upstream!r} fine-tunes from another "
                                "config itself; a study pretrains in one step")
        if any(key not in REPEAT_AXES for key in grid):
            key = next(key for key in grid if key not in REPEAT_AXES)
            raise KerascnnError(f"{where(key, index)}: {upstream!r} has grid.{key}, but a config others fine-tune "
                                f"from may repeat only over seeds, {' or '.join(REPEAT_AXES)}")
        if upstream in shared_dependencies:
            runs = [r for r in planned if r.config == upstream]
            if len(runs) != 1:
                raise KerascnnError(f"{where('seeds', index)}: {upstream!r} is shared, so it runs once: give it "
                                    f"seeds = [N] and no grid (it has {len(runs)} runs)")
        else:
            if own_seeds:
                raise KerascnnError(
                    f"{where('seeds', index)}: {upstream!r} takes its seeds from the configs that fine-tune from "
                    f"it (replicate k fine-tunes from {upstream} seed k); remove its seeds, or add "
                    f"share = [\"{upstream}\"] to pretrain once for every replicate")
            seeds = sorted({r.seed for r in dependents})
            planned = [r for r in planned if r.config != upstream]
            planned += _expand(upstream, index, settings, grid, seeds, planned, where)
            runs = [r for r in planned if r.config == upstream]
        for run in runs:
            run.dependency = True
        for run in dependents:
            run.upstream_run = _matching_run(run, runs, shared=upstream in shared_dependencies, where=where)
    study.runs = [r for r in planned if r.dependency] + [r for r in planned if not r.dependency]
    for run in study.runs if check else []:
        check_run(run, where)
    return study


def _expand(name: str, index: int, settings: dict[str, Any], grid: dict[str, list], seeds: list[int],
            planned: list[PlannedRun], where: Callable[..., str]) -> list[PlannedRun]:
    """The runs of one ``[[config]]``: every grid value for every seed."""
    runs: list[PlannedRun] = []
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values))
        for seed in seeds:
            label = "".join(f"-{k}-{_text(v)}" for k, v in setting.items())
            run_name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{name}{label}-seed{seed}")
            if any(r.name == run_name for r in [*planned, *runs]):
                raise KerascnnError(f"{where('name', index)}: two runs of {name!r} would share the folder "
                                    f"{run_name}; give each seed and grid value once")
            runs.append(PlannedRun(run_name, name, setting, seed, {**settings, **setting, "seed": seed}, table=index))
    return runs


def _matching_run(run: PlannedRun, upstream_runs: list[PlannedRun], shared: bool, where: Callable[..., str]) -> str:
    """The dependency run ``run`` fine-tunes from: the shared one, else the one with its seed and its
    values of the repeat axes the dependency repeats over (a whole-pipeline replicate)."""
    if shared:
        return upstream_runs[0].name
    for candidate in upstream_runs:
        if candidate.seed == run.seed and all(k in run.setting and run.setting[k] == value
                                              for k, value in candidate.setting.items()):
            return candidate.name
    axes = ", ".join(f"{k}={v}" for k, v in upstream_runs[0].setting.items())
    raise KerascnnError(f"{where('weights', run.table)}: run {run.name} has no run of {run.upstream} to fine-tune "
                        f"from with its seed and {axes or 'setting'}; give both configs the same repeat axes, or "
                        f"share = [\"{run.upstream}\"]")


def check_run(run: PlannedRun, where: Callable[..., str]) -> None:
    """Raise `KerascnnError` (naming the run and the file line) unless the run's settings would start."""
    from kerascnn.runner import resolve_config

    options = dict(run.options)
    if run.upstream:
        options["weights"] = "none"  # the dependency's model does not exist yet
    try:
        resolve_config(config.RunConfig(**options))
    except KerascnnError as exc:
        raise KerascnnError(f"{where(exc.option or 'name', run.table)}: run {run.name}: {exc}",
                            option=exc.option) from None
    except (TypeError, ValueError) as exc:
        raise KerascnnError(f"{where('name', run.table)}: run {run.name}: a setting has the wrong type "
                            f"({exc})") from None


def run_config(run: PlannedRun, study_dir: Path) -> config.RunConfig:
    """The `RunConfig` of ``run`` in ``study_dir`` (``@NAME`` weights -> that run's model file; the
    default decoded-image cache becomes ``disk``, so that runs share it)."""
    options = dict(run.options)
    if run.upstream:
        options["weights"] = str(study_dir / run.upstream_run / "model.keras")
    if options.get("cache", "auto") == "auto":
        options["cache"] = "disk"  # the study's runs decode each image-file split once and share it
    settings = config.RunConfig(**options, out=str(study_dir / run.name))
    settings.environment = {"study": str(study_dir), "study_config": run.config}
    return settings


def prepare_folder(study: Study, out: Path) -> None:
    """Create the study folder, or check that an existing one holds this very study (its
    ``study.toml`` copy), so that running the same command again resumes it."""
    copy = out / "study.toml"
    if copy.is_file():
        if copy.read_text() != study.text:
            raise KerascnnError(f"{out} holds another version of the study (its study.toml differs from "
                                f"{study.path}); give another --out")
        return
    rundir.check_free(out, "--out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KerascnnError(f"cannot create the study folder {str(out)!r} ({exc.strerror}); "
                            "give another --out") from None
    copy.write_text(study.text)


def state_of(run: PlannedRun, out: Path) -> str:
    """``finished``, ``resumable`` (a checkpoint to go on from), ``elsewhere`` (another process is
    running it), ``stale`` (started, no epoch finished) or ``new``."""
    folder = out / run.name
    if not folder.exists():
        return "new"
    status = rundir.read_status(folder)
    if status == "finished":
        return "finished"
    if status == "running" and rundir.running_elsewhere(folder):
        return "elsewhere"
    return "resumable" if (folder / "checkpoint" / "state.json").is_file() else "stale"


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


def select(study: Study, only: str | None) -> list[PlannedRun]:
    """The runs of configuration ``only`` and of what it fine-tunes from (None: every run)."""
    if only is None:
        return list(study.runs)
    if only not in {r.config for r in study.runs}:
        raise KerascnnError(f"--only {only}: no config of that name; configs: "
                            f"{', '.join(dict.fromkeys(r.config for r in study.runs))}")
    needed = {only} | {r.upstream for r in study.runs if r.config == only}
    return [r for r in study.runs if r.config in needed]


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
    if engine == "local" and workers <= 1:
        for run, resume in jobs:
            log.info("%s: %s", run.name, "resuming" if resume else "starting")
            try:
                execute_run(_config_options(run, out), str(out / run.name), resume)
            except Exception as exc:  # noqa: BLE001 - one run's failure (out of memory, ...) is not the study's
                failed[run.name] = f"{run.name}: {_first_line(exc)}"
                log.warning("%s failed: %s", run.name, failed[run.name])
            write_summary(study, out, summarize(study, out, failed))
        return
    arguments = [(_config_options(run, out), str(out / run.name), resume) for run, resume in jobs]
    if engine == "local":
        _run_in_processes(arguments, [r for r, _ in jobs], workers, failed, study, out)
    else:
        _run_with_submitit(arguments, [r for r, _ in jobs], out, engine, engine_options, failed, study)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _config_options(run: PlannedRun, out: Path) -> dict[str, Any]:
    return dataclasses.asdict(run_config(run, out))


def _run_in_processes(arguments: list[tuple], runs: list[PlannedRun], workers: int, failed: dict[str, str],
                      study: Study, out: Path) -> None:
    """``workers`` runs at a time in worker processes (`concurrent.futures`), one GPU each when
    there are several, else the CPU's threads split between them."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    gpus = visible_gpus()
    queue = None
    if len(gpus) > 1:
        queue = context.Manager().Queue()
        for i in range(workers):
            queue.put(gpus[i % len(gpus)])
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(threads, queue))
    futures = {pool.submit(execute_run, *args): run for args, run in zip(arguments, runs)}
    try:
        for future in as_completed(futures):
            run = futures[future]
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - a worker's error, reported per run
                failed[run.name] = f"{run.name}: {_first_line(exc)}"
                log.warning("%s failed: %s", run.name, failed[run.name])
            write_summary(study, out, summarize(study, out, failed))
    except BaseException:
        processes = list(getattr(pool, "_processes", {}).values())  # the executor has no public handle
        pool.shutdown(wait=False, cancel_futures=True)  # queued runs never start
        for process in processes:
            process.terminate()  # SIGTERM: the run in it marks itself interrupted
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
        raise
    pool.shutdown()


def _run_with_submitit(arguments: list[tuple], runs: list[PlannedRun], out: Path, engine: str,
                       engine_options: dict[str, str], failed: dict[str, str], study: Study) -> None:
    """Hand the runs to submitit: SLURM jobs (``engine`` ``slurm``) or its local executor
    (``submitit-local``, subprocesses on this machine)."""
    try:
        import submitit
    except ImportError:
        raise KerascnnError(f"--engine {engine} needs submitit: pip install 'kerascnn[slurm]'") from None
    cluster = "local" if engine == "submitit-local" else "slurm"
    executor = submitit.AutoExecutor(folder=out / "submitit", cluster=cluster)
    options: dict[str, Any] = {k: int(v) if str(v).isdigit() else v for k, v in engine_options.items()}
    options.setdefault("timeout_min", 24 * 60)
    executor.update_parameters(**options)
    jobs = [executor.submit(execute_run, *args) for args in arguments]
    try:
        for job, run in zip(jobs, runs):
            try:
                job.result()
            except Exception as exc:  # noqa: BLE001 - submitit wraps the run's error; its last line is the run's
                lines = str(exc).strip().splitlines()
                failed[run.name] = f"{run.name}: {lines[-1] if lines else type(exc).__name__}"
                log.warning("%s failed: %s", run.name, failed[run.name])
            write_summary(study, out, summarize(study, out, failed))
    except BaseException:
        for job in jobs:
            job.cancel(check=False)  # SLURM sends SIGTERM: each run marks itself interrupted
        raise


def estimated_seconds(study: Study, out: Path) -> dict[str, float | None]:
    """Training seconds each unfinished run may still take: the epochs it has left at the seconds
    per epoch measured so far by its configuration's runs (finished ones, or the epochs an
    interrupted one logged), else by its config's; None before any epoch of either has run."""
    histories = {run.name: rundir.read_history(out / run.name) for run in study.runs}
    measured: dict[str, list[float]] = {}
    for run in study.runs:
        for key in (run.configuration, run.config):
            measured.setdefault(key, []).extend(histories[run.name].get("seconds", []))
    estimates: dict[str, float | None] = {}
    for run in study.runs:
        if state_of(run, out) == "finished":
            continue
        per_epoch = measured.get(run.configuration) or measured.get(run.config)
        epochs = run.options.get("epochs") or config.RunConfig(run.options["dataset"], run.options["model"]).epochs
        left = max(0, epochs - len(histories[run.name].get("epoch", [])))
        estimates[run.name] = float(np.mean(per_epoch)) * left if per_epoch else None
    return estimates


def write_plan(study: Study, out: Path) -> None:
    """``study.json`` with the plan alone (the summary is added as runs finish)."""
    path = out / "study.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    rundir.write_json(path, {**existing, "study": study.name, "file": str(study.path), "plan": plan_rows(study)})


def plan_rows(study: Study) -> list[dict[str, Any]]:
    return [{"run": r.name, "config": r.config, "configuration": r.configuration, "seed": r.seed,
             "setting": r.setting, "dependency": r.dependency, "weights_from": r.upstream_run} for r in study.runs]


# ---- summary -------------------------------------------------------------------------------------------


def t_interval(values: list[float]) -> list[float]:
    """95% Student-t interval of the mean of ``values`` (two or more fractions), clipped to [0, 1]."""
    from scipy import stats

    n = len(values)
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return [max(0.0, mean - half), min(1.0, mean + half)]  # scores are fractions


def paired_test(a: dict[tuple, dict[str, Any]], b: dict[tuple, dict[str, Any]], out: Path) -> dict[str, Any] | None:
    """Whether configuration ``a`` and ``b`` (replicate -> run row) differ in test accuracy: a paired
    t-test over shared replicates (two or more), else McNemar's exact test on one shared test set.
    None when they share no replicate tested on the same images."""
    from scipy import stats

    from kerascnn.reports import same_test_set

    shared = [k for k in a if k in b and same_test_set(a[k]["test_set"], b[k]["test_set"])]
    if not shared:
        return None
    diffs = np.array([a[k]["accuracy"] - b[k]["accuracy"] for k in shared])
    if len(shared) >= 2:
        test = f"paired t over {len(shared)} replicates"
        if np.std(diffs) == 0:  # t is undefined: the same difference on every replicate
            return {"test": test, "difference": float(diffs.mean()), "p": None}
        p = float(stats.ttest_rel([a[k]["accuracy"] for k in shared], [b[k]["accuracy"] for k in shared]).pvalue)
        return {"test": test, "difference": float(diffs.mean()), "p": p}
    key = shared[0]
    pa, pb = (np.load(out / r[key]["run"] / "test_predictions.npz") for r in (a, b))
    if not np.array_equal(pa["labels"], pb["labels"]) or not np.array_equal(pa["index"], pb["index"]):
        return None
    right_a, right_b = pa["predicted"] == pa["labels"], pb["predicted"] == pb["labels"]
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    p = float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    return {"test": f"McNemar exact on {len(right_a)} test images ({only_a} vs {only_b} discordant)",
            "difference": float(diffs[0]), "p": p}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (family-wise error over all the comparisons)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def variance_sources(runs: list[PlannedRun]) -> dict[str, list[str]]:
    """What the interval over ``runs`` covers: each source of chance that differs between them
    (training seed, split, fold, the dependency run each fine-tunes from), and the runs it is
    conditional on (one dependency run they all share)."""
    covers = [source for source, values in (
        ("training seed", {r.seed for r in runs}),
        ("split", {r.options.get("split_seed", 0) for r in runs}),
        ("fold", {r.setting.get("fold") for r in runs}),
    ) if len(values) > 1]
    upstream_runs = sorted({r.upstream_run for r in runs if r.upstream_run})
    if len(upstream_runs) > 1:
        covers.append(f"dependency {runs[0].upstream}")
    conditional = upstream_runs if len(upstream_runs) == 1 and len(runs) > 1 else []
    return {"covers": covers, "conditional_on": conditional}


def covers_text(variance: dict[str, list[str]]) -> str:
    """The report's words for what an interval covers."""
    words = ", ".join(variance["covers"]) or "test images only (one run)"
    if variance["conditional_on"]:
        words += f"; conditional on one pretraining run, {variance['conditional_on'][0]}"
    return words


def summarize(study: Study, out: Path, failed: dict[str, str] | None = None) -> dict[str, Any]:
    """One row per configuration over its finished runs, the chosen setting of each group, and the
    paired comparisons of the chosen ones."""
    from kerascnn.reports import summarize_run

    rows: dict[str, dict[tuple, dict[str, Any]]] = {}
    finished: dict[str, list[PlannedRun]] = {}
    meta: dict[str, PlannedRun] = {}
    planned: dict[str, int] = {}
    for run in study.runs:
        if run.dependency:
            continue
        planned[run.configuration] = planned.get(run.configuration, 0) + 1
        meta.setdefault(run.configuration, run)
        if state_of(run, out) == "finished":
            rows.setdefault(run.configuration, {})[run.replicate] = summarize_run(out / run.name)
            finished.setdefault(run.configuration, []).append(run)
    trained_in: dict[str, list[str]] = {}  # precision -> the finished runs that trained in it
    for by_replicate in rows.values():
        for row in by_replicate.values():
            trained_in.setdefault(row["precision"], []).append(row["run"])
    configurations = []
    for name, run in meta.items():
        done = list(rows.get(name, {}).values())
        entry: dict[str, Any] = {"configuration": name, "config": run.config, "group": run.group,
                                 "setting": {k: v for k, v in run.setting.items() if k not in REPEAT_AXES},
                                 "runs_finished": len(done), "runs_planned": planned[name], "chosen": False}
        if done:
            for metric in SUMMARY:
                values = [r[metric] for r in done]
                if len(values) > 1:
                    ci = t_interval(values)
                else:
                    ci = done[0].get(f"{metric}_ci95") if metric != "weighted_f1" else None
                entry[metric] = {"mean": float(np.mean(values)),
                                 "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                                 "ci95": ci, "values": values}
            for key in ("ece", "val_accuracy", "best_epoch", "seconds_per_epoch", "images_per_second", "train_seconds",
                        "peak_memory_mb"):
                values = [r[key] for r in done if r.get(key) is not None]
                entry[key] = float(np.mean(values)) if values else None
            entry["trainable_params"] = done[0]["trainable_params"]
            entry["runs"] = [r["run"] for r in done]
            entry["variance"] = variance_sources(finished[name])
        configurations.append(entry)
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in configurations:
        groups.setdefault(entry["group"], []).append(entry)
    for members in groups.values():
        scored = [e for e in members if e.get("val_accuracy") is not None]
        if scored:
            max(scored, key=lambda e: e["val_accuracy"])["chosen"] = True
        elif len(members) == 1 and members[0]["runs_finished"]:  # nothing to choose between
            members[0]["chosen"] = True
    chosen = [e for e in configurations if e["chosen"]]
    comparisons = []
    for first, second in itertools.combinations(chosen, 2):
        result = paired_test(rows[first["configuration"]], rows[second["configuration"]], out)
        pair = {"a": first["configuration"], "b": second["configuration"],
                "conditional_on": sorted({*first["variance"]["conditional_on"], *second["variance"]["conditional_on"]})}
        if result is None:
            comparisons.append({**pair, "verdict": "not compared: no runs tested on the same test set"})
        elif result["p"] is None:
            comparisons.append({**pair, **result, "verdict": "not testable: the same difference on every replicate"})
        else:
            comparisons.append({**pair, **result})
    tested = [c for c in comparisons if c.get("p") is not None]
    for c, adjusted in zip(tested, holm([c["p"] for c in tested])):
        c["p_holm"], c["real"] = adjusted, adjusted < 0.05
    return {"study": study.name, "file": str(study.path), "plan": plan_rows(study), "configurations": configurations,
            "comparisons": comparisons, "failed": dict(failed or {}), "precisions": trained_in,
            "runs_finished": sum(e["runs_finished"] for e in configurations),
            "runs_planned": sum(planned.values())}


def _number(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def precision_note(trained_in: dict[str, list[str]]) -> str | None:
    """A warning when the study's runs trained in more than one precision (``--precision auto``
    resolved on machines that differ, or a study resumed across a change of its default), else None."""
    if len(trained_in) < 2:
        return None
    groups = "; ".join(f"{precision}: {', '.join(runs)}" for precision, runs in sorted(trained_in.items()))
    return (f"**Warning**: the runs did not all train in one precision ({groups}), so their differences "
            "include the arithmetic's; set `precision` in the study file to train them alike.")


def study_markdown(summary: dict[str, Any]) -> str:
    """The study's report: the table, what was chosen on validation, which differences are real."""
    lines = [f"# Study {summary['study']}", "",
             f"From `{summary['file']}`: {summary['runs_finished']} of {summary['runs_planned']} runs finished"
             + (" (the rest are missing from the table below; run the same command again to go on)."
                if summary["runs_finished"] < summary["runs_planned"] else "."), ""]
    if summary["failed"]:
        lines += ["Failed: " + "; ".join(markdown_text(v) for v in summary["failed"].values()), ""]
    if note := precision_note(summary["precisions"]):
        lines += [note, ""]
    lines += ["Scores are test-set percentages, mean ± std over the runs (seeds, folds) of each configuration, "
              "with a 95% interval (Student t over runs; with one run, the run's own interval: Wilson for "
              "accuracy, bootstrap over test images for macro F1). Peak MB: the GPU's peak memory, or on a CPU "
              "the run's peak resident memory. **chosen** marks, within each strategy, the setting with the "
              "best validation accuracy (of the model each run kept); the test scores of the other settings are "
              "shown but were not used to choose. ECE: the test set's expected calibration error (mean over "
              "runs). **interval covers** names the sources of chance that differ between a configuration's "
              "runs; a configuration that fine-tunes from one shared pretraining run "
              "(`share` in the study file) has intervals and tests conditional on that run: another pretraining "
              "run can move them further than they show.", "",
              "| configuration | runs | test accuracy | 95% interval | interval covers | macro F1 | weighted F1 | "
              "ECE | val accuracy | best epoch | trainable | s/epoch | images/s | peak MB | chosen |",
              "|" + " --- |" * 15]

    def pct(value: float | None) -> str:  # the header says these are percentages
        return percent(value, unit="")

    for e in summary["configurations"]:
        if not e["runs_finished"]:
            lines.append(f"| {markdown_text(e['configuration'])} | 0/{e['runs_planned']} | not run yet |" + " |" * 12)
            continue
        acc, ci = e["accuracy"], e["accuracy"]["ci95"]
        interval = f"{pct(ci[0])}–{pct(ci[1])}" if ci else "–"
        lines.append(
            f"| {markdown_text(e['configuration'])} | {e['runs_finished']}/{e['runs_planned']} | {pct(acc['mean'])} ± "
            f"{pct(acc['std'])} | {interval} | {markdown_text(covers_text(e['variance']))} | "
            f"{pct(e['macro_f1']['mean'])} ± {pct(e['macro_f1']['std'])} | "
            f"{pct(e['weighted_f1']['mean'])} | {pct(e['ece'])} | {pct(e['val_accuracy'])} | "
            f"{_number(e['best_epoch'], '.1f')} | {e['trainable_params']:,} | "
            f"{_number(e['seconds_per_epoch'], '.1f')} | {_number(e['images_per_second'], '.0f')} | "
            f"{_number(e['peak_memory_mb'], '.0f')} | {'**chosen**' if e['chosen'] else ''} |")
    lines += ["", "## Which differences are real", ""]
    if not summary["comparisons"]:
        lines.append("Fewer than two chosen configurations have finished runs: nothing to compare yet.")
    if any("p_holm" in c for c in summary["comparisons"]):
        lines += ["p-values are Holm-adjusted over all the comparisons below, so \"real at 95%\" holds for "
                  "the whole list at once.", ""]
    for c in summary["comparisons"]:
        if "p_holm" not in c:
            lines.append(f"- {c['a']} vs {c['b']}: {c['verdict']}.")
            continue
        better, worse = (c["a"], c["b"]) if c["difference"] >= 0 else (c["b"], c["a"])
        words = "a real difference at 95%" if c["real"] else "not distinguishable at 95%"
        given = f", conditional on the pretraining run {', '.join(c['conditional_on'])}" if c["conditional_on"] else ""
        lines.append(f"- {better} vs {worse}: {100 * abs(c['difference']):+.2f} points of test accuracy "
                     f"({c['test']}, adjusted p = {c['p_holm']:.3g}): {words}{given}.")
    lines += ["", "![validation curves and accuracy against training time](comparison.png)", ""]
    return "\n".join(lines)


def write_summary(study: Study, out: Path, summary: dict[str, Any]) -> None:
    """``study.json``, ``study.md`` and ``comparison.png`` for what has finished so far."""
    from kerascnn.plots import plot_study

    rundir.write_json(out / "study.json", summary)
    (out / "study.md").write_text(study_markdown(summary))
    curves = {}
    for e in summary["configurations"]:
        histories = [rundir.read_history(out / run).get("val_accuracy") for run in e.get("runs", [])]
        curves[e["configuration"]] = [np.array(h) for h in histories if h]
    plot_study(summary["configurations"], curves, out / "comparison.png")
