"""Rendering: a run's ``report.md`` and the comparison table of several runs."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from kerascnn.config import RunConfig
from kerascnn.errors import KerascnnError

_MARKDOWN_SPECIALS = str.maketrans({**{c: "\\" + c for c in "\\`*_[]|#!~"}, "\n": " ", "\r": " "})


def markdown_text(value: Any) -> str:
    """``value`` (a class or file name, anything a user's data supplies) as literal Markdown text on one
    line: it cannot break a table, open a link, a code span or raw HTML."""
    return html.escape(str(value).translate(_MARKDOWN_SPECIALS), quote=False)


def percent(value: float | None, unit: str = "%") -> str:
    """``value`` (a fraction) as a percentage with two decimals; "–" for a missing value."""
    return "–" if value is None else f"{100 * value:.2f}{unit}"


def fast_path_note(fast_path: dict[str, Any] | None) -> str:
    """One line on which training step ran (`kerascnn.training.compile_model`'s verdict)."""
    if not fast_path:
        return "not recorded"
    if fast_path["used"]:
        return "kerascnn's fast torch path"
    return f"Keras' own ({fast_path['reason']})"


def write_report(run_dir: str | Path, config: RunConfig, dataset: dict[str, Any], metrics: dict[str, Any]) -> Path:
    """Write ``report.md``: result, data, model, training, per-class scores, confusion matrix, figures."""
    run_dir = Path(run_dir)
    env = config.environment
    names = [markdown_text(name) for name in metrics["class_names"]]
    lo, hi = metrics["accuracy_ci95"]
    lines = [
        f"# {markdown_text(config.dataset)} · {config.model} — {percent(metrics['accuracy'])} test accuracy",
        "",
        f"Command: {markdown_text(env.get('command', ''))}  ",
        f"Started {env.get('started', '?')} on {env.get('device', '?')}, backend {env.get('backend', '?')}, "
        f"Keras {env.get('versions', {}).get('keras', '?')}.",
        f"Training step: {fast_path_note(metrics.get('fast_path'))}.",
        "",
        "## Test results",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| accuracy | {percent(metrics['accuracy'])} (95% CI {percent(lo)}–{percent(hi)}, n={metrics['n_test']}) |",
    ]
    for avg in ("macro", "weighted"):
        lines += [f"| {avg} {m} | {percent(metrics[f'{avg}_{m}'])} |" for m in ("precision", "recall")]
        f1_lo, f1_hi = metrics.get(f"{avg}_f1_ci95", (None, None))
        interval = f" (95% bootstrap CI {percent(f1_lo)}–{percent(f1_hi)})" if f1_lo is not None else ""
        lines.append(f"| {avg} f1 | {percent(metrics[f'{avg}_f1'])}{interval} |")
    lines += [f"| top-{k} accuracy | {percent(v)} |" for k, v in metrics["top_k_accuracy"].items()]
    if without := metrics.get("without_tta"):
        lines += [f"| without test-time augmentation ({metrics['tta']}) | accuracy {percent(without['accuracy'])}, "
                  f"macro F1 {percent(without['macro_f1'])} |"]
    sizes, per_class = dataset["sizes"], dataset["per_class"]
    lines += [
        "",
        "## Data",
        "",
        f"{len(names)} classes; images {'×'.join(map(str, dataset['image_shape']))}; "
        f"train {sizes['train']}, validation {sizes['val']}, test {sizes['test']}; "
        f"unreadable files skipped: {metrics['skipped_files']}.",
        "",
    ]
    skipped = metrics.get("skipped_file_names", [])
    lines += [f"- skipped: {markdown_text(name)}" for name in skipped[:20]]
    lines += [f"- ... and {len(skipped) - 20} more (all in metrics.json)"] if len(skipped) > 20 else []
    lines += [f"- {markdown_text(note)}" for note in dataset["notes"]]
    if leakage := metrics.get("leakage"):
        lines += [f"- duplicate removed from {e['removed_from']}: {markdown_text(e['file'])} is the same file as "
                  f"{markdown_text(e['same_as'])} ({e['kept_in']})" for e in leakage["examples"]]
    lines += [
        "",
        "## Model and training",
        "",
        "| setting | value |",
        "| --- | --- |",
        f"| model | {config.model}, working at {metrics['image_size']}×{metrics['image_size']} pixels |",
        f"| weights | {markdown_text(_weights_text(metrics.get('weights', {})))} |",
        f"| trained stages | {', '.join(metrics.get('unfrozen_stages', [])) or '-'}"
        f"{f' (head alone until epoch {config.unfreeze_at})' if config.unfreeze_at else ''} |",
        f"| frozen stages | {', '.join(metrics.get('frozen_stages', [])) or 'none'} |",
        f"| parameters | {metrics['trainable_params']:,} trainable of {metrics['total_params']:,} |",
        f"| optimizer | {config.optimizer}, lr {config.lr:g}, schedule {config.lr_schedule}, "
        f"weight decay {config.weight_decay:g}, batch {config.batch_size}"
        f"{f', backbone LR x{config.backbone_lr_scale:g}' if config.backbone_lr_scale != 1 else ''}"
        f"{f', fine-tune lr {config.finetune_lr or config.lr / 10:g}' if config.unfreeze_at else ''} |",
        f"| augmentation | {_augment_text(config)} |",
        f"| epochs | {metrics['epochs_run']} of {config.epochs} (best {metrics['best_epoch']}"
        f"{', stopped early' if metrics['stopped_early'] else ''}) |",
        f"| time | {metrics['train_seconds']:.0f} s training, {metrics['seconds_per_epoch']:.1f} s/epoch |",
        "",
        "![learning curves](curves.png)",
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support | train | val |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, name in enumerate(names):
        s = metrics["per_class"][metrics["class_names"][i]]
        lines.append(f"| {name} | {percent(s['precision'])} | {percent(s['recall'])} | {percent(s['f1'])} "
                     f"| {s['support']} | {per_class['train'][i]} | {per_class['val'][i]} |")
    lines += ["", "## Confusion matrix", "", "Rows: true class; columns: predicted class.", ""]
    if len(names) <= 15:
        lines += ["| true \\ predicted | " + " | ".join(names) + " |", "| --- " * (len(names) + 1) + "|"]
        for name, row in zip(names, metrics["confusion_matrix"]):
            lines.append(f"| {name} | " + " | ".join(map(str, row)) + " |")
        lines.append("")
    lines += [
        "![confusion matrix](confusion_matrix.png)",
        "",
        *calibration_lines(metrics),
        "## Most confident mistakes",
        "",
        "![most confident mistakes](mistakes.png)",
        "",
        "Where the model looked (Grad-CAM of the predicted class; `python -m experiments.explain` draws it for "
        "any image):",
        "",
        "![most confident mistakes with Grad-CAM](mistakes_cam.png)",
        "",
        "## Files",
        "",
        "`config.json` (every setting and the environment), `model.keras` (takes raw pixels; "
        "`python -m experiments.predict` uses it; `python -m experiments.export` exports it), `history.csv`, "
        "`metrics.json`, `test_predictions.npz` (each test image's true and predicted class), `best.weights.h5`, "
        "`status.json`, the figures above.",
        "",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def calibration_lines(metrics: dict[str, Any]) -> list[str]:
    """The report's calibration section: ECE (15 bins, bootstrap interval), MCE, NLL, Brier, before
    and after temperature scaling where the run calibrated."""
    after = metrics.get("calibration")
    if not after:
        return []
    before = metrics.get("before_calibration")

    def cells(scores: dict[str, Any]) -> list[str]:
        lo, hi = scores["ece_ci95"]
        return [f"{percent(scores['ece'])} (95% CI {percent(lo)}–{percent(hi)})", percent(scores["mce"]),
                f"{scores['nll']:.4f}", f"{scores['brier']:.4f}"]

    rows = ["ECE", "MCE", "NLL", "Brier"]
    lines = ["## Calibration", "",
             f"Whether a predicted probability is right that often: expected calibration error over {after['bins']} "
             "confidence bins (ECE), its largest bin gap (MCE), negative log-likelihood and Brier score; lower is "
             "better.", ""]
    if before:
        lines += [f"Temperature scaling (T = {metrics['temperature']:.3f}, fitted on the validation split) divides "
                  "the logits in `model.keras`; accuracy is unchanged.", "",
                  "| score | before | after temperature scaling |", "| --- | --- | --- |"]
        lines += [f"| {r} | {b} | {a} |" for r, b, a in zip(rows, cells(before), cells(after))]
    else:
        lines += ["| score | value |", "| --- | --- |"] + [f"| {r} | {a} |" for r, a in zip(rows, cells(after))]
    return [*lines, "", "![reliability diagram](calibration.png)", ""]


def _weights_text(weights: dict[str, Any]) -> str:
    text = str(weights.get("source", "none"))
    if weights.get("layers_new"):
        text += f" (new: {', '.join(weights['layers_new'])})"
    return text


def _augment_text(config: RunConfig) -> str:
    parts = [] if config.augment == "none" else [config.augment]
    parts += [name for name, on in (("flip", config.flip),) if on]
    parts += [f"rotate {config.rotate:g}°"] if config.rotate else []
    parts += [f"translate {config.translate:g}"] if config.translate else []
    parts += [f"{name} {getattr(config, name):g}" for name in ("erase", "mixup", "cutmix") if getattr(config, name)]
    return ", ".join(parts) or "none"


SUMMARY_METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1")


def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """One row about a run folder: its settings that matter for comparison and its test metrics."""
    from kerascnn.rundir import DONE, read_status

    run_dir = Path(run_dir)
    status = read_status(run_dir)
    if status not in DONE or not (run_dir / "config.json").is_file():
        missing = "no metrics.json" if (run_dir / "config.json").is_file() else "no config.json"
        raise KerascnnError(f"{run_dir} is not a finished run (status {status}, {missing}); compare finished runs")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    row = {"run": run_dir.name, "dataset": config["dataset"], "model": config["model"],
           "weights": Path(str(config.get("weights") or "none")).name, "unfreeze": config.get("unfreeze") or "-",
           "trainable_params": metrics["trainable_params"], "epochs": metrics["epochs_run"],
           "best_epoch": metrics.get("best_epoch"), "train_seconds": metrics["train_seconds"],
           "seconds_per_epoch": metrics.get("seconds_per_epoch"), "seed": config.get("seed", 0),
           "peak_memory_mb": metrics.get("peak_memory_mb"), "precision": config.get("precision", "float32"),
           "val_accuracy": _val_accuracy_at(run_dir, metrics.get("best_epoch")),
           "test_set": test_set_of(config, metrics)}
    train_images = metrics.get("dataset", {}).get("sizes", {}).get("train")
    if train_images and metrics["train_seconds"]:
        row["images_per_second"] = train_images * metrics["epochs_run"] / metrics["train_seconds"]
    row.update({m: metrics[m] for m in SUMMARY_METRICS})
    row["ece"] = metrics.get("calibration", {}).get("ece")  # None: a run from before calibration was scored
    row.update({k: metrics[k] for k in ("accuracy_ci95", "macro_f1_ci95") if k in metrics})
    return row


def _val_accuracy_at(run_dir: Path, epoch: int | None) -> float | None:
    """Validation accuracy of ``epoch`` (1-based) in ``history.csv``: the model the run kept."""
    from kerascnn.rundir import read_history

    history = read_history(run_dir)
    if not epoch or "val_accuracy" not in history or epoch not in history["epoch"]:
        return None
    return history["val_accuracy"][history["epoch"].index(epoch)]


def test_set_of(config: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """What a run was tested on: the test images' fingerprint (older runs: none) and the settings
    that choose them (dataset, split, fold, split seed)."""
    seed = config.get("split_seed")
    return {"fingerprint": metrics.get("test_set_fingerprint"), "dataset": config["dataset"],
            "split": config.get("split"), "fold": config.get("fold", 0),
            "split_seed": config.get("seed", 0) if seed is None else seed}


TEST_SET_SETTINGS = ("dataset", "split", "fold", "split_seed")


def same_test_set(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two `test_set_of` records name the same test images: by fingerprint where both
    have one, else by the settings that choose them."""
    if a["fingerprint"] and b["fingerprint"]:
        return a["fingerprint"] == b["fingerprint"]
    return all(a[k] == b[k] for k in TEST_SET_SETTINGS)


def check_same_test_set(rows: list[dict[str, Any]]) -> None:
    """Raise `KerascnnError` unless every `summarize_run` row was tested on the same images,
    naming the difference."""
    first = rows[0]["test_set"]
    for row in rows[1:]:
        other = row["test_set"]
        if same_test_set(first, other):
            continue
        differ = [f"{k} {first[k]!r} vs {other[k]!r}" for k in TEST_SET_SETTINGS
                  if first[k] != other[k]] or ["the test images themselves"]
        raise KerascnnError(f"{rows[0]['run']} and {row['run']} were tested on different test sets "
                            f"({', '.join(differ)}); their scores cannot be ranked against each other")


def runs_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of `summarize_run` rows (scores in percent)."""
    head = ["run", "model", "weights", "unfreeze", "trainable", "epochs", "train s", "precision", *SUMMARY_METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [markdown_text(r["run"]), r["model"], markdown_text(r["weights"]), r["unfreeze"],
                 f"{r['trainable_params']:,}", str(r["epochs"]),
                 f"{r['train_seconds']:.0f}", r["precision"], *(percent(r[m], unit="") for m in SUMMARY_METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
