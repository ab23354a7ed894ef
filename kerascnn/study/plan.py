"""Planning a study: its file parsed and checked into runs (`load_study`), and the state of each
run in a study folder (docs/studies.md)."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerascnn import config, distribute, rundir
from kerascnn.errors import KerascnnError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("kerascnn")


BUNDLED = Path(__file__).resolve().parent / "bundled"  # package data: the study files found by name


REPEAT_AXES = ("fold", "split_seed")  # like seeds: repeats of one configuration, paired across configurations


NOT_IN_STUDIES = ("out", "runs_dir", "seed")  # the study sets these


def run_fields() -> tuple[str, ...]:
    """The settings a study file may give: every `RunConfig` option the study does not set itself."""
    return tuple(name for name in config.options() if name not in NOT_IN_STUDIES)


def is_hyper_parameter(name: str) -> bool:
    """Whether axis ``name`` tunes a strategy rather than makes another one (`kerascnn.config.Option.hyper`):
    configurations that differ only in these are one strategy, whose best setting on validation is chosen."""
    return name in config.hyper_parameters()


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
    search: Search | None = None  # for a file with a [search] table


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def find_study_file(source: str) -> Path:
    """``source`` itself if it is a file, else the bundled ``<source>.toml`` (`BUNDLED`)."""
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
    every run's settings are checked here (`kerascnn.runner.check_and_resolve`, which also looks for
    the data), before anything trains. A file with a ``[search]`` table is a strategy search
    (`kerascnn.study.search`): its ``[[config]]`` tables are the baselines and what trials fine-tune from."""
    path = find_study_file(source)
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KerascnnError(f"{path}: {exc}") from None
    study = plan_study(data, path, text, check)
    if "search" in data:
        study.search = parse_search(data["search"], study, data, check)
    return study


def plan_study(data: dict[str, Any], path: Path, text: str, check: bool = True) -> Study:
    """The planned runs of parsed study-file ``data`` (read from ``path``, whose ``text`` error
    lines point into); `load_study` with the parsing done."""
    where = lambda key, table=None: f"{path.name} line {_line(text, key, table)}"  # noqa: E731
    shared = {k.replace("-", "_"): v for k, v in data.items() if k not in ("config", "grid", "share", "search")}
    tables = data.get("config", [])
    if not isinstance(tables, list) or not (tables or "search" in data):
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
    environment = distribute.Environment.current() if check else None  # read once, not per run
    for run in study.runs if check else []:
        check_run(run, where, environment)
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


def check_run(run: PlannedRun, where: Callable[..., str], environment: distribute.Environment | None = None) -> None:
    """Raise `KerascnnError` (naming the run and the file line) unless the run's settings would start
    on ``environment`` (default: this machine)."""
    try:
        _check_settings(run.options, environment)
    except KerascnnError as exc:
        raise KerascnnError(f"{where(exc.option or 'name', run.table)}: run {run.name}: {exc}",
                            option=exc.option) from None


def _check_settings(options: dict[str, Any], environment: distribute.Environment | None) -> None:
    """`kerascnn.runner.check_and_resolve` of a planned run's ``options`` (``@NAME`` weights as none: the
    dependency's model does not exist yet); a value of the wrong type is a `KerascnnError` too."""
    from kerascnn.runner import check_and_resolve

    if str(options.get("weights") or "").startswith("@"):
        options = {**options, "weights": "none"}
    try:
        check_and_resolve(config.RunConfig(**options), environment)
    except (TypeError, ValueError) as exc:
        raise KerascnnError(f"a setting has the wrong type ({exc})") from None


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


def select(study: Study, only: str | None) -> list[PlannedRun]:
    """The runs of configuration ``only`` and of what it fine-tunes from (None: every run)."""
    if only is None:
        return list(study.runs)
    if only not in {r.config for r in study.runs}:
        raise KerascnnError(f"--only {only}: no config of that name; configs: "
                            f"{', '.join(dict.fromkeys(r.config for r in study.runs))}")
    needed = {only} | {r.upstream for r in study.runs if r.config == only}
    return [r for r in study.runs if r.config in needed]


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


# A study file's [search] table (run by `kerascnn.study.search`)

PRUNERS = ("hyperband", "successive_halving", "none")
SAMPLERS = ("tpe", "random", "grid")
TRIAL = "trial"  # the planned configuration a trial's settings start from (a search file may not use the name)
GRID = "grid"  # --full-grid's configuration
WINNER = "search-"  # the confirmed trials' configurations: search-1, search-2, ...
TRIALS_DIR = "trials"  # the study folder's subfolder of trial run folders, trial-NNNN
KEYS = ("space", "trials", "budget", "pruner", "sampler", "min_epochs", "storage", "seed", "confirm")


@dataclass(frozen=True)
class Dimension:
    """One searched option: a choice list, or a range from ``low`` to ``high`` (ints when both are,
    log-uniform with ``log``)."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False

    def suggest(self, trial: Any) -> Any:
        """This option's value for Optuna ``trial`` (a retried trial's own value)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def size(self) -> int | None:
        """How many values the option can take: its choices, or an integer range's; None for floats."""
        if self.choices is not None:
            return len(self.choices)
        if isinstance(self.low, int) and isinstance(self.high, int):
            return self.high - self.low + 1
        return None

    def checked_values(self) -> tuple[Any, ...]:
        """The values a pre-flight check tries: every choice, or both ends of the range."""
        return self.choices if self.choices is not None else (self.low, self.high)


@dataclass(frozen=True)
class Search:
    """A parsed ``[search]`` table (module docstring) and the file data it was read with."""

    space: tuple[Dimension, ...]
    trials: int | None
    budget: int | None
    pruner: str
    sampler: str
    storage: str | None
    seed: int
    top: int
    seeds: tuple[int, ...]
    data: dict[str, Any]  # the whole study file, parsed
    race: int  # the best trials that start the confirmation (halved after each seed down to top)
    min_epochs: int | None  # the first epoch at which the pruner may stop a trial; None: a fifth of its epochs

    def first_rung(self, epochs: int) -> int:
        """The first epoch at which the pruner may stop a trial of ``epochs`` (Optuna's ``min_resource``)."""
        return self.min_epochs if self.min_epochs is not None else max(1, epochs // 5)

    def space_size(self) -> int | None:
        """Distinct settings the space holds (integer ranges counted); None when a float range makes it infinite."""
        sizes = [d.size() for d in self.space]
        return None if None in sizes else int(np.prod(sizes))

    def grid_size(self) -> int | None:
        """Configurations in the full grid of the space; None when a range makes it infinite."""
        return None if any(d.choices is None for d in self.space) else self.space_size()


def _search_line(text: str, key: str) -> int:
    """The line (1-based) of ``key`` in the file's ``[search]`` table (its header if not found)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"\s*\[\s*search(\.\w+)?\s*\]", line)), 0)
    leaf = key.split(".")[-1]
    for i in range(start, len(lines)):
        if re.match(rf"\s*((space|confirm)\s*\.\s*)?{re.escape(leaf)}\s*=", lines[i]):
            return i + 1
    return start + 1


def parse_search(table: Any, study: Study, data: dict[str, Any], check: bool = True) -> Search:
    """Check a study file's ``[search]`` table into a `Search`; with ``check``, each value of the
    space is checked as a trial's setting before anything trains."""
    where = lambda key: f"{study.path.name} line {_search_line(study.text, key)}"  # noqa: E731
    if not isinstance(table, dict):
        raise KerascnnError(f"{where('search')}: [search] must be a table")
    for key in table:
        if key not in KEYS:
            raise KerascnnError(f"{where(key)}: unknown [search] key {key!r}; keys: {', '.join(KEYS)}")
    if "grid" in data:
        raise KerascnnError(f"{where('search')}: a search file's top-level grid would apply to its trials; give "
                            "grids in the baselines' [[config]] tables")
    for table_ in data.get("config", []):
        name = str(table_.get("name", ""))
        if name in (TRIAL, GRID) or name.startswith(WINNER):
            raise KerascnnError(f"{where('search')}: config name {name!r}: {TRIAL}, {GRID} and {WINNER}N name the "
                                "search's own configurations; rename that config")
    space = table.get("space")
    if not isinstance(space, dict) or not space:
        raise KerascnnError(f"{where('space')}: [search] needs space, a table of options to search "
                            "(space.lr = {low = 1e-4, high = 1e-2, log = true})")
    dimensions = tuple(_dimension(name.replace("-", "_"), value, where) for name, value in space.items())
    pruner = table.get("pruner", "hyperband")
    if pruner not in PRUNERS:
        raise KerascnnError(f"{where('pruner')}: unknown pruner {pruner!r}; pruners: {', '.join(PRUNERS)}")
    sampler = table.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise KerascnnError(f"{where('sampler')}: unknown sampler {sampler!r}; samplers: {', '.join(SAMPLERS)}")
    if sampler == "grid" and any(d.choices is None for d in dimensions):
        name = next(d.name for d in dimensions if d.choices is None)
        raise KerascnnError(f"{where(name)}: the grid sampler needs choice lists, and space.{name} is a range")
    counts = {}
    for key in ("trials", "budget"):
        value = table.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise KerascnnError(f"{where(key)}: {key} must be an integer >= 1, got {value!r}")
        counts[key] = value
    if counts["trials"] is None and counts["budget"] is None and sampler != "grid":
        raise KerascnnError(f"{where('search')}: give trials (how many) or budget (epochs over all trials)")
    storage = table.get("storage")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise KerascnnError(f"{where('storage')}: storage must be an Optuna storage URL "
                            f"(postgresql://user@host/db, sqlite:///search.db), got {storage!r}")
    confirm = table.get("confirm", {})
    if not isinstance(confirm, dict) or any(k not in ("top", "seeds", "race") for k in confirm):
        raise KerascnnError(f"{where('confirm')}: confirm must be a table {{top = 3, seeds = [0, 1, 2]}} "
                            "(and race = N)")
    top = confirm.get("top", 3)
    seeds = confirm.get("seeds", data.get("seeds", [0, 1, 2]))
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise KerascnnError(f"{where('top')}: confirm.top must be an integer >= 1, got {top!r}")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise KerascnnError(f"{where('seeds')}: confirm.seeds must be a non-empty list of integers >= 0")
    race = confirm.get("race", top)
    if not isinstance(race, int) or isinstance(race, bool) or race < top:
        raise KerascnnError(f"{where('confirm')}: confirm.race (the trials that start the confirmation) must be an "
                            f"integer >= confirm.top ({top}), got {race!r}")
    if race > top and len(seeds) < 2:
        raise KerascnnError(f"{where('confirm')}: confirm.race races the trials over the confirmation seeds, so it "
                            "needs two seeds or more")
    min_epochs = table.get("min_epochs")
    if min_epochs is not None and (not isinstance(min_epochs, int) or isinstance(min_epochs, bool) or min_epochs < 1):
        raise KerascnnError(f"{where('min_epochs')}: min_epochs must be an integer >= 1, got {min_epochs!r}")
    if min_epochs is not None and pruner == "none":
        raise KerascnnError(f"{where('min_epochs')}: min_epochs is the pruner's first epoch, and pruner = \"none\" "
                            "prunes nothing; remove one of them")
    seed = table.get("seed", max(seeds) + 1)  # a trial's run is not one of the winners' replicates
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise KerascnnError(f"{where('seed')}: seed must be an integer >= 0, got {seed!r}")
    search = Search(dimensions, counts["trials"], counts["budget"], pruner, sampler, storage, seed, top,
                    tuple(seeds), data, race, min_epochs)
    if check:
        if importlib.util.find_spec("optuna") is None:
            raise KerascnnError("a [search] runs on Optuna: pip install 'kerascnn[search]'")
        _check_space(search, study, where)
    return search


def _check_space(search: Search, study: Study, where: Any) -> None:
    """Raise `KerascnnError` (naming the line and value) unless a trial with each value of the space
    would start on this machine (`kerascnn.runner.check_and_resolve`) and ``min_epochs`` is below its epochs."""
    trial_run = planned_trial(search, study)
    epochs = trial_epochs(search, trial_run)
    if search.min_epochs is not None and search.min_epochs >= epochs:
        raise KerascnnError(f"{where('min_epochs')}: min_epochs must be below a trial's epochs ({epochs}), "
                            f"got {search.min_epochs}")
    options = trial_run.options
    environment = distribute.Environment.current()
    for dimension in search.space:
        for value in dimension.checked_values():
            try:
                _check_settings({**options, dimension.name: value}, environment)
            except KerascnnError as exc:
                raise KerascnnError(f"{where(f'space.{dimension.name}')}: space.{dimension.name} = {value!r}: {exc}",
                                    option=exc.option) from None


def _dimension(name: str, value: Any, where: Any) -> Dimension:
    if name not in run_fields():
        raise KerascnnError(f"{where(name)}: space.{name} is not a run option; keys are experiments.run's long "
                            "option names")
    if isinstance(value, list):
        if not value:
            raise KerascnnError(f"{where(name)}: space.{name} is an empty choice list; give at least one value")
        if not all(isinstance(v, (str, int, float, bool)) for v in value):
            raise KerascnnError(f"{where(name)}: space.{name} choices must be strings, numbers or booleans")
        if len(set(map(repr, value))) < len(value):
            raise KerascnnError(f"{where(name)}: space.{name} lists a choice twice")
        return Dimension(name, choices=tuple(value))
    if isinstance(value, dict) and {"low", "high"} <= set(value) and set(value) <= {"low", "high", "log"}:
        low, high, log_scale = value["low"], value["high"], value.get("log", False)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) \
                or not isinstance(log_scale, bool):
            raise KerascnnError(f"{where(name)}: space.{name} needs numbers low and high (and log = true|false)")
        if low > high:
            raise KerascnnError(f"{where(name)}: space.{name} has low {low} > high {high}")
        if log_scale and low <= 0:
            raise KerascnnError(f"{where(name)}: space.{name} is log-uniform, so low must be > 0, got {low}")
        return Dimension(name, low=low, high=high, log=log_scale)
    raise KerascnnError(f"{where(name)}: space.{name} must be a choice list [..] or a range "
                        f"{{low = .., high = .., log = true}}, got {value!r}")


def derived_study(search: Search, study: Study, seeds: list[int], extra: list[dict[str, Any]]) -> Study:
    """The file's study with ``seeds`` and the ``[[config]]`` tables ``extra`` added: the trials'
    plan (one `TRIAL` config) and the confirmation (the winners). Its text stays the file's, so
    both use the same study folder."""
    data = {k: v for k, v in search.data.items() if k != "search"}
    data["seeds"] = seeds
    data["config"] = [*copy.deepcopy(search.data.get("config", [])), *extra]
    planned = plan_study(data, study.path, study.text, check=False)
    planned.search = search
    return planned


def trial_epochs(search: Search, trial_run: PlannedRun) -> int:
    """The most epochs a trial trains (the pruner's full resource)."""
    for dimension in search.space:
        if dimension.name == "epochs":
            return int(max(dimension.checked_values()))
    options = trial_run.options
    return int(options.get("epochs") or config.RunConfig(options["dataset"], options["model"]).epochs)


def planned_trial(search: Search, study: Study) -> PlannedRun:
    """The planned run every trial starts from: the file's shared settings with the search seed,
    fine-tuning (``weights = "@NAME"``) from that seed's run of NAME."""
    trials = derived_study(search, study, [search.seed], [{"name": TRIAL}])
    return next(r for r in trials.runs if r.config == TRIAL)
