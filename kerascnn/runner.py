"""`run`: one experiment from a `RunConfig` to a complete run folder."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

import kerascnn
from kerascnn import (
    calibration,
    checkpoint,
    data,
    distribute,
    evaluation,
    explain,
    models,
    plots,
    reports,
    rundir,
    training,
)
from kerascnn.config import RunConfig
from kerascnn.data.cache import decode_splits
from kerascnn.data.dataset import Dataset
from kerascnn.errors import KerascnnError
from kerascnn.resolution import ResolvedRun, cnn_options, resolve
from kerascnn.saving import save_model

log = logging.getLogger("kerascnn")


def load_dataset(config: RunConfig) -> Dataset:
    """The dataset of ``config``, image files decoded at the size its model works at (and cached as
    ``config.cache`` says, `kerascnn.data.cache`)."""
    dataset = data.load(config.dataset, data_dir=config.data_dir, split=config.split, val_split=config.val_split,
                        seed=config.data_seed, image_size=models.get(config.model).decode_size(config.image_size),
                        fold=config.fold)
    where = decode_splits({s: getattr(dataset, s) for s in ("train", "val", "test")}, dataset.image_shape,
                          config.cache)
    if where:
        log.info(where)
        dataset.notes.append(where)
    return dataset


def working_size(config: RunConfig, dataset: Dataset) -> int:
    """The image size ``config``'s model works at on ``dataset`` (``image_size`` None: the data's own)."""
    return models.get(config.model).working_size(config.image_size, dataset.image_shape[0])


def build_model(config: RunConfig, dataset: Dataset) -> keras.Model:
    """The model of a resolved ``config`` for ``dataset``."""
    return models.build(config.model, dataset.image_shape, dataset.num_classes,
                        image_size=working_size(config, dataset), weights=config.weights,
                        sample=lambda: dataset.statistics_sample(config.seed), head_dropout=config.head_dropout,
                        **cnn_options(config))


def check_and_resolve(config: RunConfig, environment: distribute.Environment | None = None) -> ResolvedRun:
    """`resolve` ``config`` on ``environment`` (default: this machine) once its data is known to exist
    (`kerascnn.data.check`): every check a run makes before anything is created."""
    config.validate()
    data.check(config.dataset, config.fold, config.data_dir)
    return resolve(config, environment)


def model_metadata(config: RunConfig, dataset: Dataset) -> dict[str, Any]:
    """What ``model.keras`` says about itself (read back by `kerascnn.saving.load_model`)."""
    return {
        "kerascnn_version": kerascnn.__version__,
        "class_names": dataset.class_names,
        "dataset": config.dataset,
        "model": config.model,
        "weights": config.weights,
        "input_shape": list(dataset.image_shape),
        "image_size": working_size(config, dataset),  # the working size (a backbone resizes its input to it)
        "backend": keras.backend.backend(),
    }


def evaluate_run(model: keras.Model, dataset: Dataset, config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Test-set metrics of ``model`` (calibration included) and the confusion-matrix, reliability
    and mistakes figures."""
    batch_size = max(config.batch_size, 256)
    test = training.eval_batches(dataset, "test", batch_size, config.workers)
    passes = [evaluation.predict_proba(model, test)]
    kept = np.ones(len(dataset.test), bool)
    if test.skipped:  # files that went bad while streaming have no prediction
        kept = ~np.isin(dataset.test.paths, list(test.skipped))
    labels = dataset.test.labels[kept]
    if config.tta == "flip":
        mirrored = training.eval_batches(dataset, "test", batch_size, config.workers, mirror=True)
        mirrored.skipped = test.skipped  # known bad already: not warned about twice
        passes.append(evaluation.predict_proba(model, mirrored))
    proba = np.mean(passes, axis=0)
    metrics = evaluation.classification_metrics(labels, proba, dataset.class_names, top_k=config.top_k)
    metrics["calibration"] = calibration.calibration_metrics(labels, proba)
    metrics["tta"] = config.tta
    metrics["test_set_fingerprint"] = dataset.test.fingerprint()
    np.savez_compressed(run_dir / "test_predictions.npz", labels=labels, predicted=proba.argmax(axis=1),
                        index=np.flatnonzero(kept))
    if config.tta != "none":
        without = evaluation.classification_metrics(labels, passes[0], dataset.class_names)
        metrics["without_tta"] = {k: without[k] for k in ("accuracy", "accuracy_ci95", "macro_f1", "weighted_f1")}
    if (temperature := calibration.temperature_of(model)) is not None:
        before = np.mean([calibration.uncalibrated(p, temperature) for p in passes], axis=0)
        metrics["temperature"] = temperature
        metrics["before_calibration"] = {"accuracy": float((before.argmax(axis=1) == labels).mean()),
                                         **calibration.calibration_metrics(labels, before)}
    plots.plot_confusion_matrix(np.array(metrics["confusion_matrix"]), dataset.class_names,
                                run_dir / "confusion_matrix.png")
    plots.plot_reliability(calibration.reliability(labels, proba), metrics["calibration"]["ece"],
                           run_dir / "calibration.png")
    wrong = evaluation.most_confident_mistakes(labels, proba)
    index = np.flatnonzero(kept)[wrong]
    names = dataset.class_names
    predicted = proba[wrong].argmax(axis=1)
    images = dataset.test.pixels(index, dataset.image_shape)
    titles = ([names[i] for i in labels[wrong]], [names[i] for i in predicted], proba[wrong, predicted].tolist())
    files = [Path(p).name for p in dataset.test.paths[index]] if dataset.streamed else None
    plots.plot_mistakes(images, *titles, run_dir / "mistakes.png", names=files)
    cams = explain.grad_cam(model, images, classes=predicted, model_name=config.model) if len(wrong) else None
    plots.plot_mistakes(images, *titles, run_dir / "mistakes_cam.png", names=files,
                        maps=cams.maps if cams is not None else None,
                        title=f"where the model looked (Grad-CAM at {cams.target.name})" if cams else None)
    metrics["skipped_in_test"] = sorted(test.skipped)
    return metrics


def fit_temperature(model: keras.Model, dataset: Dataset, config: RunConfig) -> float:
    """The temperature that calibrates ``model`` on ``dataset``'s validation split (minimum NLL)."""
    batches = training.eval_batches(dataset, "val", max(config.batch_size, 256), config.workers)
    logits = np.asarray(calibration.logits_model(model).predict(batches, verbose=0), np.float64)
    labels = dataset.val.labels
    if batches.skipped:
        labels = labels[~np.isin(dataset.val.paths, list(batches.skipped))]
    temperature = calibration.fit_temperature(logits, labels)
    log.info("temperature scaling: T = %.3f (fitted on %d validation images)", temperature, len(labels))
    return temperature


def report_run(model: keras.Model, dataset: Dataset, resolved: ResolvedRun, result: training.TrainResult,
               run_dir: Path) -> dict[str, Any]:
    """Evaluate a trained run and write its ``metrics.json``, figures and ``report.md``; return the metrics."""
    config, devices = resolved.config, resolved.devices
    summary = dataset.summary()
    metrics = evaluate_run(model, dataset, resolved.training, run_dir)
    marks = [(result.unfrozen_at, f"unfreeze {config.unfreeze}")] if result.unfrozen_at else []
    plots.plot_curves(result.history, run_dir / "curves.png", marks=marks)
    metrics.update({
        "trainable_params": models.trainable_params(model),
        "total_params": int(model.count_params()),
        "weights": model.weights_source,
        **result.stages,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.train_seconds, 2),
        "seconds_per_epoch": round(result.seconds_per_epoch, 2),
        "skipped_files": len(skipped := sorted({*dataset.skipped_files, *result.skipped_files,
                                                 *metrics.pop("skipped_in_test")})),
        "skipped_file_names": skipped,
        "devices": {"count": devices.count, "effective_batch_size": devices.batch_size, "effective_lr": devices.lr},
        "precision": config.precision,
        "image_size": working_size(config, dataset),
        "fast_path": result.fast_path,
        **distribute.peak_memory(),
        "dataset": summary,
        "leakage": dataset.leakage,
    })
    rundir.write_json(run_dir / "metrics.json", metrics)
    reports.write_report(run_dir, config, summary, metrics)
    return metrics


def run(config: RunConfig, callbacks: list[keras.callbacks.Callback] | None = None) -> Path:
    """Train, evaluate and report one experiment; return its run folder. ``callbacks`` are added
    to training's own (`kerascnn.training.fit`).

    The folder holds ``config.json``, ``status.json``, ``model.keras``, ``best.weights.h5``,
    ``history.csv``, ``checkpoint/``, ``metrics.json``, ``curves.png``, ``confusion_matrix.png``,
    ``calibration.png``, ``mistakes.png``, ``mistakes_cam.png`` and ``report.md``.
    """
    resolved = check_and_resolve(config)
    if config.out:
        rundir.check_free(config.out, "--out")
    return _execute(resolved, callbacks, None)


def resume(run_dir: str | Path, callbacks: list[keras.callbacks.Callback] | None = None) -> Path:
    """Continue an interrupted or failed run in ``run_dir`` from its last complete epoch (its
    checkpoint), with its own ``config.json``; then evaluate and report it as `run` does."""
    run_dir = Path(run_dir).expanduser()
    if not (run_dir / "config.json").is_file():
        raise KerascnnError(f"--resume {str(run_dir)!r}: not a run folder (no config.json)")
    status = rundir.read_status(run_dir)
    if status in rundir.DONE:
        raise KerascnnError(f"--resume {run_dir}: the run is {status}; start a new one with --out")
    if status == "running" and rundir.running_elsewhere(run_dir):
        raise KerascnnError(f"--resume {run_dir}: the run is still running in another process")
    checkpoint.load_state(run_dir)  # one line if there is nothing to resume from
    try:
        config = RunConfig.load(run_dir / "config.json")
    except (ValueError, TypeError) as exc:
        raise KerascnnError(f"--resume {run_dir}: config.json is not readable ({exc})") from None
    config = dataclasses.replace(config, out=str(run_dir))
    return _execute(check_and_resolve(recorded_architecture(config)), callbacks, run_dir)


def recorded_architecture(config: RunConfig) -> RunConfig:
    """``config`` with the scratch-CNN options it left to the preset set from the architecture its
    run recorded, so a resumed run rebuilds the network its checkpoint holds even if the preset has
    changed since (an option the record lacks did not exist then: its `CNNSpec` default)."""
    recorded = config.architecture
    if not recorded or "backbone" in recorded:
        return config
    defaults = models.CNNSpec()
    values = {name: recorded.get(name, getattr(defaults, name)) for name in models.CNN_OPTIONS
              if getattr(config, name) is None}
    # replace runs RunConfig.__post_init__, which reads an older record's single count as a list
    return dataclasses.replace(config, **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()})


def _execute(resolved: ResolvedRun, callbacks: list[keras.callbacks.Callback] | None, resume_dir: Path | None
             ) -> Path:
    """Load, build, train (from ``resume_dir``'s checkpoint if given), evaluate, report."""
    config, devices = resolved.config, resolved.devices
    keras.utils.set_random_seed(config.seed)
    distribute.enable_compilation_cache()
    distribute.reset_peak_memory()  # this run's peak, not the process's (a study runs many in one)
    log.info("loading %s", config.dataset)
    dataset = load_dataset(config)
    summary = dataset.summary()
    log.info("%s: %d classes, train %d, val %d, test %d, images %s", dataset.name, dataset.num_classes,
             *summary["sizes"].values(), "x".join(map(str, dataset.image_shape)))
    if config.calibrate != "none" and not summary["sizes"]["val"]:
        raise KerascnnError(f"--calibrate {config.calibrate} fits on the validation split, and this {dataset.name} "
                            "split has none; give --val-split (e.g. 0.1) or a split with validation images, or "
                            "leave --calibrate out")
    if config.top_k is not None and config.top_k >= dataset.num_classes:
        raise KerascnnError(f"--top-k {config.top_k}: {dataset.name} has {dataset.num_classes} classes; give a k "
                            f"below {dataset.num_classes}")
    run_dir = None
    try:
        with models.dtype_policy(config.precision), distribute.data_parallel(devices.count):
            model = build_model(config, dataset)
            if resume_dir is None:
                run_dir = rundir.create(config.out, config.runs_dir, config.dataset, config.model)
                resolved.save(run_dir / "config.json")
            else:
                run_dir = resume_dir
            rundir.mark(run_dir, "running", pid=os.getpid())
            log.info("run folder %s; training %s (%s parameters) for up to %d epochs on %s", run_dir, config.model,
                     f"{model.count_params():,}", config.epochs, devices.describe(config.batch_size))
            result = training.fit(model, dataset, resolved.training, run_dir, callbacks,
                                  resume=resume_dir is not None)
            if config.calibrate == "temperature":
                model = calibration.with_temperature(model, fit_temperature(model, dataset, resolved.training))
            save_model(model, run_dir / "model.keras", model_metadata(config, dataset))
        metrics = report_run(model, dataset, resolved, result, run_dir)
        rundir.mark(run_dir, "finished")
    except BaseException as exc:
        if run_dir is not None:
            rundir.mark_stopped(run_dir, exc)
        raise
    checkpoint.remove(run_dir)
    log.info("test accuracy %.2f%%, macro F1 %.2f%%; report %s", 100 * metrics["accuracy"],
             100 * metrics["macro_f1"], run_dir / "report.md")
    return run_dir
