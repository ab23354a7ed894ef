"""A study's summary: one row per configuration with intervals, the setting chosen on validation,
paired tests between the chosen ones, and ``study.json``, ``study.md`` and ``comparison.png``."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from kerascnn import rundir, stats
from kerascnn.reports import markdown_text, percent, same_test_set
from kerascnn.study.plan import REPEAT_AXES, TRIALS_DIR, PlannedRun, Study, plan_rows, state_of

log = logging.getLogger("kerascnn")


SUMMARY = ("accuracy", "macro_f1", "weighted_f1")


def paired_test(a: dict[tuple, dict[str, Any]], b: dict[tuple, dict[str, Any]], out: Path) -> dict[str, Any] | None:
    """Whether configuration ``a`` and ``b`` (replicate -> run row) differ in test accuracy: a paired
    t-test over shared replicates (two or more), else McNemar's exact test on one shared test set.
    None when they share no replicate tested on the same images."""
    shared = [k for k in a if k in b and same_test_set(a[k]["test_set"], b[k]["test_set"])]
    if not shared:
        return None
    diffs = np.array([a[k]["accuracy"] - b[k]["accuracy"] for k in shared])
    if len(shared) >= 2:
        p = stats.paired_t([a[k]["accuracy"] for k in shared], [b[k]["accuracy"] for k in shared])
        return {"test": f"paired t over {len(shared)} replicates", "difference": float(diffs.mean()), "p": p}
    key = shared[0]
    pa, pb = (np.load(out / r[key]["run"] / "test_predictions.npz") for r in (a, b))
    if not np.array_equal(pa["labels"], pb["labels"]) or not np.array_equal(pa["index"], pb["index"]):
        return None
    p, only_a, only_b = stats.mcnemar_exact(pa["predicted"] == pa["labels"], pb["predicted"] == pb["labels"])
    return {"test": f"McNemar exact on {len(pa['labels'])} test images ({only_a} vs {only_b} discordant)",
            "difference": float(diffs[0]), "p": p}


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
                    ci = stats.t_interval(values)
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
    for c, adjusted in zip(tested, stats.holm([c["p"] for c in tested])):
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
    if summary.get("search"):
        lines += search_markdown(summary["search"])
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


def search_markdown(report: dict[str, Any]) -> list[str]:
    """The search's part of ``study.md``."""
    compute = report["compute"]
    lines = ["## The search", "",
             f"Sampler {report['sampler']}, pruner {report['pruner']}; each trial is a run folder in "
             f"`{TRIALS_DIR}/`, scored by the validation accuracy of the model it kept. The settings confirmed "
             "below were chosen on validation alone.", "",
             "| trial | state | settings | val accuracy | epochs trained (where it stopped) | seconds |",
             "|" + " --- |" * 6]
    for t in report["trials"]:
        settings = _settings_text(t["params"])
        state = t["state"] + (f" (retry of {t['retry_of']})" if t["retry_of"] is not None else "") + (
            f" (settings of trial {t['same_as']}: not trained again)" if t.get("same_as") is not None else "")
        value = "–" if t["val_accuracy"] is None else f"{100 * t['val_accuracy']:.2f}"
        lines.append(f"| {t['trial']} | {state} | {settings} | {value} | {t['epochs']} | {t['seconds']:.0f} |")
    if report.get("race"):
        lines += ["", "The best trials raced over the confirmation seeds: after each seed, the better half by "
                  "mean validation accuracy (the trial's and the seeds' so far; one with a failed run last) "
                  "stayed, and only the top before the last seed.", "",
                  "| candidate | trial | settings | trial's val accuracy | mean val accuracy after each seed "
                  "| left after seed |", "|" + " --- |" * 6]
        for c in report["race"]:
            means = ", ".join(f"{100 * m:.2f}" for m in c["means"])
            left = "–" if c["left_after_seed"] is None else str(c["left_after_seed"])
            left += " (a run failed)" if c.get("failed") else ""
            lines.append(f"| {c['config']} | {c['trial']} | {_settings_text(c['params'])} | "
                         f"{100 * c['val_accuracy']:.2f} | {means} | {left} |")
    lines += ["", "Confirmed with seeds: " + "; ".join(
        f"{c['config']} = trial {c['trial']} ({_settings_text(c['params'])})" for c in report["chosen"]) + "."
        + (f" The confirmed winner, chosen on the confirmation runs' validation accuracy: {report['winner']}."
           if report.get("winner") and len(report["chosen"]) > 1 else ""), ""]
    grid = (f"the full grid of the space ({compute['grid_configurations']} configurations, each with every "
            f"confirmation seed) would train up to {compute['grid_epochs']} epochs"
            + (f", about {compute['grid_seconds_estimate']:.0f} s at the search's seconds per epoch"
               if compute["grid_seconds_estimate"] else "")
            if compute["grid_epochs"] else "the space has a range, so it has no finite grid")
    lines += [f"Compute: the search trained {compute['search_epochs']} epochs in {compute['search_seconds']:.0f} s "
              f"({compute['trial_epochs']} in trials, {compute['confirm_epochs']} "
              f"{'racing and confirming' if report.get('race') else 'confirming'}); {grid}. "
              "Runs it shares with the baselines (what they fine-tune from) are not counted"
              + (f"; the trials fine-tuned from their own run {compute['trials_dependency']} (seed "
                 f"{report['seed']}, apart from the confirmation seeds, so that no winner's replicate is the trial "
                 f"that chose it), which trained {compute['trials_dependency_seconds']:.0f} s more."
                 if compute["trials_dependency"] else "."), ""]
    if report["importance"]:
        lines += ["Which settings mattered (Optuna's fANOVA importance over the complete trials): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in report["importance"].items()) + ".", "",
                  "![importance](importance.png)", ""]
    if report["verdicts"]:
        lines += ["Is the winner really better?", ""] + [f"- {v['words']}." for v in report["verdicts"]] + [""]
    return lines


def _settings_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
