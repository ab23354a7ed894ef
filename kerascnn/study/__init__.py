"""Studies: a comparison of training strategies from one TOML file, run as ordinary run folders
inside one study folder, resumable, and summarised with intervals, selection on validation and
paired tests.

A study file holds shared settings (any `RunConfig` field, as ``experiments.run``'s long option
names with ``_`` or ``-``; ``"default"`` for the dataset's or model's own default), ``seeds`` and
``grid.KEY = [...]`` axes, and ``[[config]]`` tables that override them. A ``fold`` axis, like
``seeds``, repeats a configuration, as a ``split_seed`` axis does; every other axis makes
configurations. ``weights = "@NAME"`` fine-tunes from configuration NAME's model (a dependency, run
first, not a row): each replicate from its own run of NAME (seed k from NAME's seed k), unless
``share = ["NAME"]`` trains NAME once for all of them. The bundled files: ``kerascnn/study/bundled/*.toml``.

A ``[search]`` table makes the file a strategy search (`kerascnn.study.search`).

Modules: `plan` (parse, check, state), `execute` (run), `summary` (intervals, tests, report),
`search` (Optuna trials and their confirmation); statistics in `kerascnn.stats`.
"""

from kerascnn.study.execute import execute_run, run_study, visible_gpus
from kerascnn.study.plan import (
    BUNDLED,
    REPEAT_AXES,
    STUDY_FILES,
    PlannedRun,
    Study,
    estimated_seconds,
    find_study_file,
    is_hyper_parameter,
    load_study,
    plan_rows,
    run_config,
    run_fields,
    select,
    state_of,
)
from kerascnn.study.summary import (
    covers_text,
    paired_test,
    precision_note,
    study_markdown,
    summarize,
    variance_sources,
    write_summary,
)

__all__ = [
    "BUNDLED", "REPEAT_AXES", "STUDY_FILES", "PlannedRun", "Study", "covers_text", "estimated_seconds",
    "execute_run", "find_study_file", "is_hyper_parameter", "load_study", "paired_test", "plan_rows",
    "precision_note", "run_config", "run_fields", "run_study", "select", "state_of", "study_markdown", "summarize",
    "variance_sources", "visible_gpus", "write_summary",
]
