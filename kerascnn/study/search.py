"""Strategy search: a study file's ``[search]`` table searched with Optuna, each trial an ordinary
run folder pruned on validation accuracy, then the best trials confirmed with seeds against the
file's baselines by the study's own comparison (docs/search.md).

The table: ``space`` (options as a choice list, ``{low, high}`` ints or ``{low, high, log}`` floats),
``trials`` and/or ``budget`` (epochs over all trials), ``pruner`` (`kerascnn.study.plan.PRUNERS`), ``min_epochs``
(before which no trial is pruned; default a fifth of a trial's epochs), ``sampler`` (`kerascnn.study.plan.SAMPLERS`),
``storage`` (an Optuna storage URL; default the journal file ``search.journal`` in the study folder), ``seed`` (the
trials'; default one above the confirmation seeds) and ``confirm = {top, seeds, race}`` (`race`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import socket
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerascnn import rundir
from kerascnn.errors import KerascnnError
from kerascnn.study.plan import (
    GRID,
    TRIAL,
    TRIALS_DIR,
    WINNER,
    PlannedRun,
    Search,
    Study,
    derived_study,
    planned_trial,
    run_config,
    state_of,
    trial_epochs,
)

log = logging.getLogger("kerascnn")

JOURNAL = "search.journal"  # the default storage, in the study folder
RACE = "race.json"  # the confirmation race's decisions, round by round, in the study folder
STUDY_TEXT = "study_file_sha256"  # the Optuna study's attribute: the SHA-256 of the study file it searches


def _require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise KerascnnError("a [search] runs on Optuna: pip install 'kerascnn[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def trial_folder(out: Path, number: int) -> Path:
    return out / TRIALS_DIR / f"trial-{number:04d}"


class PruneOnValidation(keras.callbacks.Callback):
    """Reports validation accuracy to an Optuna trial after each epoch (not while only the head warms
    up before ``unfreeze_at``) and stops training when the pruner says so; ``pruned_at`` is that epoch."""

    def __init__(self, trial: Any, warmup_epochs: int) -> None:
        super().__init__()
        self.trial, self.warmup_epochs, self.pruned_at = trial, warmup_epochs, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_accuracy")
        if value is None or epoch + 1 <= self.warmup_epochs:
            return
        self.trial.report(float(value), epoch + 1)
        if self.trial.should_prune():
            self.pruned_at = epoch + 1
            self.model.stop_training = True


def _objective(search: Search, trial_run: PlannedRun, out: Path):
    """The function Optuna calls per trial: a run of the trial's settings (a setting tried before
    gives that trial's result, untrained), its validation accuracy, or `optuna.TrialPruned`."""
    optuna = _require_optuna()
    from optuna.trial import TrialState

    from kerascnn.reports import summarize_run
    from kerascnn.runner import run as start_run

    def objective(trial: Any) -> float:
        params = {d.name: d.suggest(trial) for d in search.space}
        for previous in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if previous.params == params:  # a sampler may propose a setting again: its result, not a rerun
                trial.set_user_attr("same_as", previous.number)
                if previous.state == TrialState.PRUNED:
                    raise optuna.TrialPruned(f"the settings of trial {previous.number}, which was pruned")
                return float(previous.value)
        folder = trial_folder(out, trial.number)
        trial.set_user_attr("run", folder.name)
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(), "trial": trial.number})
        planned = copy.deepcopy(trial_run)
        planned.options.update(params)
        settings = run_config(planned, out)
        settings.out = str(folder)
        settings.environment = {**settings.environment, "search_trial": trial.number}
        warmup = params.get("unfreeze_at", settings.unfreeze_at) or 0  # validate refuses it with unfreeze none
        pruning = PruneOnValidation(trial, warmup)
        log.info("trial %d: %s", trial.number, ", ".join(f"{k}={v}" for k, v in params.items()))
        try:
            start_run(settings, callbacks=[pruning])
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # retried once when the command runs again
            raise
        row = summarize_run(folder)
        if row["val_accuracy"] is None:
            raise KerascnnError(f"trial {trial.number}: no validation accuracy; a search needs a validation split")
        if pruning.pruned_at is not None:
            rundir.mark(folder, "pruned", pruned_at=pruning.pruned_at)
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
        return float(row["val_accuracy"])

    return objective


def open_study(search: Search, study: Study, out: Path, worker: int = 0) -> Any:
    """The Optuna study of the search in ``out`` (created or loaded), with this worker's sampler; one
    that a storage holds under the file's name must come from this very file (`STUDY_TEXT`)."""
    optuna = _require_optuna()
    fingerprint = hashlib.sha256(study.text.encode()).hexdigest()
    seed = search.seed + worker  # workers with one seed would propose the same trials
    if search.sampler == "grid":
        sampler = optuna.samplers.GridSampler({d.name: list(d.choices) for d in search.space}, seed=seed)
    elif search.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    epochs = trial_epochs(search, planned_trial(search, study))
    first = search.first_rung(epochs)
    pruner = {"hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=first, max_resource=epochs),
              "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=first),
              "none": optuna.pruners.NopPruner}[search.pruner]()
    try:
        if search.storage is None:
            from optuna.storages.journal import JournalFileBackend

            storage: Any = optuna.storages.JournalStorage(JournalFileBackend(str(out / JOURNAL)))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    search.storage, heartbeat_interval=60, grace_period=180,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
        optuna_study = optuna.create_study(study_name=study.name, storage=storage, sampler=sampler, pruner=pruner,
                                           direction="maximize", load_if_exists=True)
        if optuna_study.user_attrs.get(STUDY_TEXT) is None:
            optuna_study.set_user_attr(STUDY_TEXT, fingerprint)
        stored = optuna_study.user_attrs.get(STUDY_TEXT)  # read back: of two files starting at once, one wins
    except Exception as exc:  # noqa: BLE001 - a database that cannot be reached, a driver not installed
        raise KerascnnError(f"search storage {search.storage or out / JOURNAL}: {' '.join(str(exc).split())[:300]}"
                            ) from None
    if stored != fingerprint:  # one name in a shared storage: two searches must not mix their trials
        raise KerascnnError(f"search storage {search.storage or out / JOURNAL} holds a search named {study.name!r} "
                            "from another version of the file; give "
                            + ("another --out" if search.storage is None else "this one another name, or another "
                               "storage"))
    return optuna_study


def trained(folder: Path) -> tuple[int, float]:
    """The epochs and training seconds in run folder ``folder``'s history (0 and 0.0 without one)."""
    history = rundir.read_history(folder)
    return len(history.get("epoch", [])), float(np.nansum(history.get("seconds", [])))


def epochs_used(trials: list[Any], out: Path) -> int:
    """Epochs trained over ``trials`` so far, from their run folders' histories."""
    return sum(trained(trial_folder(out, t.number))[0] for t in trials)


def retried_numbers(trials: list[Any]) -> set[int]:
    """The numbers of the trials that have been queued again (Optuna's ``retry_history``)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def ended_trials(trials: list[Any]) -> list[Any]:
    """The trials that count towards ``trials``: complete, pruned, or failed and not retried."""
    from optuna.trial import TrialState

    retried = retried_numbers(trials)
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and t.number not in retried)]


def search_done(search: Search, optuna_study: Any, out: Path) -> bool:
    """Whether the search has its trials (`ended_trials`), has tried every setting of a finite space
    (any sampler: more trials would only repeat one), has spent its budget of epochs, or keeps
    failing (ten failed trials, more than ran)."""
    from optuna.trial import TrialState

    trials = optuna_study.get_trials(deepcopy=False)
    ended = ended_trials(trials)
    if search.trials is not None and len(ended) >= search.trials:
        return True
    failed = sum(t.state == TrialState.FAIL for t in ended)
    if failed >= 10 and failed > len(ended) - failed:
        return True
    size, names = search.space_size(), {d.name for d in search.space}
    tried = {json.dumps(t.params, sort_keys=True) for t in ended if set(t.params) == names}
    if size is not None and len(tried) >= size:
        return True
    return search.budget is not None and epochs_used(trials, out) >= search.budget


def retry_stopped_trials(optuna_study: Any) -> list[int]:
    """Mark failed the running trials whose worker died (its process on this host is gone, or it never
    recorded itself within two minutes of the trial's start) and queue each trial stopped that way or
    by an interrupt for one retry, as Optuna's ``RetryHeartbeatStaleTrialCallback`` would; return the
    numbers retried."""
    import optuna
    from optuna.trial import TrialState

    trials = optuna_study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    queued = []
    for trial in trials:
        worker = trial.user_attrs.get("worker")
        if worker and worker.get("trial", trial.number) == trial.number:  # not one a retry copied from its original
            gone = not rundir.process_alive(worker["host"], worker["pid"])
        else:  # its worker died before it said who it is
            gone = trial.datetime_start is not None and (datetime.now() - trial.datetime_start).total_seconds() > 120
        dead = trial.state == TrialState.RUNNING and gone
        if dead:
            optuna_study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        if (dead or (trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted"))) \
                and trial.number not in retried and "failed_trial" not in trial.system_attrs:
            # as Optuna's RetryHeartbeatStaleTrialCallback queues it (the same system attributes), but
            # without the stopped trial's user attributes: its worker and run folder are not the retry's
            optuna_study.add_trial(optuna.trial.create_trial(
                state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
                system_attrs={"failed_trial": trial.number, "retry_history": [trial.number]}))
            queued.append(trial.number)
    for number in queued:
        log.warning("trial %d stopped with its worker; it runs again", number)
    return queued


def search_worker(source: str, out: str, worker: int = 0) -> int:
    """Run trials of the search in study file ``source`` in folder ``out`` until it is done: what
    each ``--workers`` process, SLURM job or node calls; return the trials this worker ran."""
    from kerascnn.study.plan import load_study

    optuna = _require_optuna()
    study = load_study(source, check=False)
    out_path = Path(out)
    search = study.search
    optuna_study = open_study(search, study, out_path, worker)
    retry_stopped_trials(optuna_study)
    if search_done(search, optuna_study, out_path):
        return 0
    objective = _objective(search, planned_trial(search, study), out_path)
    ran = 0

    def after_trial(optuna_study: Any, trial: Any) -> None:
        nonlocal ran
        ran += 1
        if trial.state == optuna.trial.TrialState.FAIL:
            log.warning("trial %d failed: %s", trial.number, trial.system_attrs.get("fail_reason", ""))
        retry_stopped_trials(optuna_study)
        if search_done(search, optuna_study, out_path):
            optuna_study.stop()

    optuna_study.optimize(objective, callbacks=[after_trial], catch=(KerascnnError, ValueError, RuntimeError),
                          gc_after_trial=True)
    return ran


def wait_for_trials(optuna_study: Any, poll_seconds: float = 15.0) -> None:
    """Wait while trials run in other workers (those of dead workers are failed and retried by the caller)."""
    from optuna.trial import TrialState

    while any(t.state == TrialState.RUNNING for t in optuna_study.get_trials(deepcopy=False)):
        if retry_stopped_trials(optuna_study):
            return
        time.sleep(poll_seconds)


def winners(optuna_study: Any, count: int) -> list[dict[str, Any]]:
    """The best ``count`` complete trials by validation accuracy, one per setting, as configurations
    ``search-1``, ``search-2``, ... in that order."""
    from optuna.trial import TrialState

    chosen: list[dict[str, Any]] = []
    ranked = sorted(optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                    key=lambda t: (-t.value, t.number))
    for trial in ranked:
        if trial.params in [c["params"] for c in chosen]:
            continue
        chosen.append({"trial": trial.number, "params": dict(trial.params), "val_accuracy": trial.value,
                       "config": f"{WINNER}{len(chosen) + 1}"})
        if len(chosen) == count:
            break
    return chosen


def race(search: Search, study: Study, candidates: list[dict[str, Any]], out: Path,
         **execution: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Race ``candidates`` over the confirmation seeds, as successive halving does over epochs: each
    runs the next seed, then the better half by mean validation accuracy (its trial's and its seeds'
    so far; a candidate with a failed run ranks last) stays, only ``confirm.top`` before the last
    seed. Each round's decision is kept in `RACE`, so the command run again decides the same. Return
    the survivors and every candidate's record (its mean after each seed, the seed after which it
    left, its run folders)."""
    from kerascnn.reports import summarize_run
    from kerascnn.study.execute import run_study

    path = out / RACE
    decided = json.loads(path.read_text())["rounds"] if path.is_file() else []
    records = [{**c, "means": [], "failed": False, "left_after_seed": None, "runs": []} for c in candidates]
    alive = list(records)
    for done, seed in enumerate(search.seeds[:-1], start=1):
        if len(alive) <= search.top:
            break
        plan = derived_study(search, study, list(search.seeds[:done]),
                             [{"name": c["config"], **c["params"]} for c in alive])
        runs = {c["config"]: [r for r in plan.runs if r.config == c["config"]] for c in alive}
        entrants = [{"config": c["config"], "params": c["params"]} for c in alive]
        if len(decided) >= done and decided[done - 1]["entrants"] == entrants:  # decided before: nothing retrains
            means, failed = decided[done - 1]["means"], set(decided[done - 1]["failed"])
        else:
            run_study(plan, out, **execution)
            while any(state_of(r, out) == "elsewhere" for rs in runs.values() for r in rs):
                time.sleep(15)  # the same round on another node: decide on its runs once they end
            means, failed = {}, set()
            for candidate in alive:
                values = [candidate["val_accuracy"]]
                for run in runs[candidate["config"]]:
                    try:
                        values.append(summarize_run(out / run.name)["val_accuracy"])
                    except KerascnnError:  # not finished: the run failed
                        failed.add(candidate["config"])
                means[candidate["config"]] = float(np.mean([v for v in values if v is not None]))
            decided = [*decided[:done - 1], {"seed": seed, "entrants": entrants, "means": means,
                                             "failed": sorted(failed)}]
            rundir.write_json(path, {"rounds": decided})
        for candidate in alive:
            candidate["runs"] = [r.name for r in runs[candidate["config"]]]
            candidate["means"].append(means[candidate["config"]])
            candidate["failed"] = candidate["failed"] or candidate["config"] in failed
        alive.sort(key=lambda c: (c["failed"], -c["means"][-1], c["trial"]))
        last = done == len(search.seeds) - 1  # the last seed left: only the top stay
        for candidate in alive[search.top if last else max(search.top, -(-len(alive) // 2)):]:
            candidate["left_after_seed"] = seed
        alive = [c for c in alive if c["left_after_seed"] is None]
    survivors = [{k: c[k] for k in ("trial", "params", "val_accuracy", "config")} for c in alive]
    return survivors, records


def confirmation_study(search: Search, study: Study, chosen: list[dict[str, Any]]) -> Study:
    """The file's study with the chosen settings as configurations ``search-1``, ..., every one
    with the confirmation seeds (whole-pipeline replicates, as any study's)."""
    return derived_study(search, study, list(search.seeds), [{"name": c["config"], **c["params"]} for c in chosen])


def run_search(study: Study, out: Path, *, workers: int = 1, engine: str = "local",
               engine_options: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the search of ``study`` in ``out`` (continuing one begun there), confirm its best trials
    against the baselines, and write the study's report with the search's part; return the summary."""
    from kerascnn.study.execute import executor_for, run_study
    from kerascnn.study.plan import prepare_folder
    from kerascnn.study.summary import write_summary

    optuna = _require_optuna()
    search = study.search
    prepare_folder(study, out)
    trial_run = planned_trial(search, study)
    if trial_run.upstream:  # what every trial fine-tunes from, first (another node may be training it)
        trial_plan = derived_study(search, study, [search.seed], [{"name": TRIAL}])
        dependency = next(r for r in trial_plan.runs if r.name == trial_run.upstream_run)
        while state_of(dependency, out) == "elsewhere":
            time.sleep(15)
        done = run_study(trial_plan, out, workers=1, engine=engine, engine_options=engine_options,
                         only=trial_run.upstream)
        if done["failed"]:
            raise KerascnnError(f"the search's dependency failed: {next(iter(done['failed'].values()))}")
    while True:
        executor = executor_for(engine, workers, engine_options or {}, out)
        futures = [executor.submit(search_worker, str(study.path), str(out), i) for i in range(workers)]
        errors = []
        try:
            for future in executor.completed(futures):
                try:
                    future.result()
                except Exception as exc:  # noqa: BLE001 - one worker's end is not the search's
                    errors.append(executor.error_line(exc))
        except BaseException:
            executor.stop()
            raise
        executor.close()
        optuna_study = open_study(search, study, out)
        wait_for_trials(optuna_study)
        retry_stopped_trials(optuna_study)
        waiting = optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if search_done(search, optuna_study, out) or not waiting or errors:
            break  # else a worker died elsewhere, leaving a trial to retry: run the workers again
    if errors and not search_done(search, optuna_study, out):
        raise KerascnnError(f"the search's workers stopped ({errors[0]}); run the same command again")
    candidates = winners(optuna_study, search.race)
    if not candidates:
        raise KerascnnError("no trial of the search completed (all pruned or failed); see "
                            f"{out / TRIALS_DIR} and widen the space or give more trials")
    execution = {"workers": workers, "engine": engine, "engine_options": engine_options}
    chosen, raced = race(search, study, candidates, out, **execution)
    confirmation = confirmation_study(search, study, chosen)
    summary = run_study(confirmation, out, **execution)
    confirm_runs = sorted({*(run for c in raced for run in c["runs"]),
                           *(r.name for r in confirmation.runs if r.config.startswith(WINNER))})
    summary["search"] = search_report(search, optuna_study, out, chosen, raced, confirm_runs, summary, trial_run)
    write_summary(confirmation, out, summary)
    return summary


def search_report(search: Search, optuna_study: Any, out: Path, chosen: list[dict[str, Any]],
                  raced: list[dict[str, Any]], confirm_runs: list[str], summary: dict[str, Any],
                  trial_run: PlannedRun) -> dict[str, Any]:
    """The search's part of ``study.json``: each trial, the race of the best ones (`race`), the
    compute (trials, and ``confirm_runs``: the race's and the confirmation's run folders) against the
    full grid's, which settings mattered, and the verdict on each winner against each baseline;
    draws ``importance.png``."""
    trials = []
    for t in optuna_study.get_trials(deepcopy=False):
        epochs, seconds = trained(trial_folder(out, t.number))
        trials.append({"trial": t.number, "state": t.state.name.lower(), "params": dict(t.params),
                       "val_accuracy": t.value, "epochs": epochs, "seconds": seconds,
                       "retry_of": t.system_attrs.get("failed_trial"), "same_as": t.user_attrs.get("same_as"),
                       "run": f"{TRIALS_DIR}/{t.user_attrs['run']}" if "run" in t.user_attrs else None})
    confirm = [trained(out / run) for run in confirm_runs]
    confirm_epochs, confirm_seconds = sum(e for e, _ in confirm), sum(s for _, s in confirm)
    search_epochs = sum(t["epochs"] for t in trials) + confirm_epochs
    search_seconds = sum(t["seconds"] for t in trials) + confirm_seconds
    per_epoch = search_seconds / search_epochs if search_epochs else None
    grid = search.grid_size()
    grid_epochs = grid * len(search.seeds) * trial_epochs(search, trial_run) if grid else None
    own = trial_run.upstream_run if trial_run.upstream_run not in {r["run"] for r in summary["plan"]} else None
    compute = {"search_epochs": search_epochs, "search_seconds": search_seconds,
               "trial_epochs": search_epochs - confirm_epochs, "confirm_epochs": confirm_epochs,
               "grid_configurations": grid, "grid_epochs": grid_epochs,
               "grid_seconds_estimate": grid_epochs * per_epoch if grid_epochs and per_epoch else None,
               "trials_dependency": own,
               "trials_dependency_seconds": trained(out / own)[1] if own else None}
    importance = _importance(optuna_study, out / "importance.png")
    confirmed = [c for c in summary["configurations"]
                 if c["config"].startswith(WINNER) and c.get("val_accuracy") is not None]
    best_confirmed = max(confirmed, key=lambda c: c["val_accuracy"])["configuration"] if confirmed else None
    baselines = [c for c in summary["configurations"] if c["chosen"] and not c["config"].startswith(WINNER)]
    verdicts = []
    for winner in chosen:
        for baseline in baselines:
            pair = {winner["config"], baseline["configuration"]}
            comparison = next((c for c in summary["comparisons"] if {c["a"], c["b"]} == pair), None)
            verdicts.append({"winner": winner["config"], "baseline": baseline["configuration"],
                             "words": _verdict_words(winner["config"], baseline["configuration"], comparison)})
    return {"space": {d.name: list(d.choices) if d.choices is not None else {"low": d.low, "high": d.high, "log": d.log}
                      for d in search.space},
            "sampler": search.sampler, "pruner": search.pruner, "seed": search.seed, "trials": trials, "chosen": chosen,
            "race": [{k: c[k] for k in ("config", "trial", "params", "val_accuracy", "means", "failed",
                                        "left_after_seed", "runs")} for c in raced] if len(raced) > len(chosen)
            else None,
            "winner": best_confirmed,
            "compute": compute, "importance": importance, "verdicts": verdicts}


def _verdict_words(winner: str, baseline: str, comparison: dict[str, Any] | None) -> str:
    if comparison is not None and comparison.get("difference") == 0 and "p_holm" not in comparison:
        return f"{winner} trained as {baseline} did (the same test accuracy on every replicate): the search chose " \
               f"{baseline}'s setting"
    if comparison is None or "p_holm" not in comparison:
        return f"{winner} and {baseline} could not be compared ({(comparison or {}).get('verdict', 'no shared runs')})"
    difference = comparison["difference"] if comparison["a"] == winner else -comparison["difference"]
    points = f"{100 * difference:+.2f} points, adjusted p = {comparison['p_holm']:.3g}"
    if comparison["real"]:
        return f"{winner} is {'really better' if difference > 0 else 'really worse'} than {baseline} ({points})"
    return f"{winner} is not shown to differ from {baseline} ({points}): the search's choice may be luck"


def _importance(optuna_study: Any, path: Path) -> dict[str, float] | None:
    """Optuna's parameter importances (fANOVA) over the complete trials, drawn as a bar chart; None
    with fewer than three complete trials."""
    import optuna

    complete = optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 3:
        return None
    try:
        importance = optuna.importance.get_param_importances(
            optuna_study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError):
        return None
    if not importance:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(importance)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(names)))
    ax.barh(names, [importance[n] for n in names])
    ax.set_xlabel("importance for validation accuracy (fANOVA)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {k: float(v) for k, v in importance.items()}


def full_grid_study(search: Search, study: Study) -> Study:
    """The full grid of the search's space (choice lists only) as a study with the confirmation
    seeds: one configuration ``grid`` beside the baselines, to check a search against."""
    if search.grid_size() is None:
        name = next(d.name for d in search.space if d.choices is None)
        raise KerascnnError(f"--full-grid: space.{name} is a range, so the space has no finite grid")
    grid = derived_study(search, study, list(search.seeds),
                         [{"name": GRID, "grid": {d.name: list(d.choices) for d in search.space}}])
    grid.search = None
    return grid


def describe_search(search: Search, study: Study, out: Path) -> str:
    """What ``--dry-run`` prints for a search: its space and stopping rule, and its trials so far in ``out``."""
    space = "; ".join(f"{d.name} in {list(d.choices)}" if d.choices is not None else
                      f"{d.name} from {d.low} to {d.high}{' (log)' if d.log else ''}" for d in search.space)
    stop = " or ".join(text for value, text in ((search.trials, f"{search.trials} trials"),
                                                (search.budget, f"{search.budget} epochs")) if value) or "the grid"
    grid = search.grid_size()
    lines = [f"search {study.name} from {study.path} -> {out}", f"  space: {space}" + (
             f" ({grid} settings)" if grid else ""),
             f"  {search.sampler} sampler, {search.pruner} pruner"
             + (f" (from epoch {search.first_rung(trial_epochs(search, planned_trial(search, study)))})"
                if search.pruner != "none" else "")
             + f", until {stop}; then the best "
             + (f"{search.race} race over seeds {list(search.seeds)} down to {search.top}, confirmed"
                if search.race > search.top else f"{search.top} with seeds {list(search.seeds)}")
             + " against the baselines"]
    if search.storage is not None or (out / JOURNAL).is_file():
        optuna_study = open_study(search, study, out)
        states = [t.state.name.lower() for t in optuna_study.get_trials(deepcopy=False)]
        lines.append("  trials so far: " + (", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
                                           or "none"))
    return "\n".join(lines)
