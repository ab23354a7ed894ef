"""Figures of a run (matplotlib, Agg): learning curves, confusion matrix, most confident mistakes."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402


def plot_curves(history: dict[str, list[float]], path: str | Path, marks: Sequence[tuple[int, str]] = ()) -> Figure:
    """Loss, accuracy and (when logged) learning rate per epoch, numbered from 1; returns the (closed) figure.

    A mark ``(epoch, label)`` says a new phase starts after ``epoch`` epochs: a vertical line in every
    panel between epochs ``epoch`` and ``epoch + 1``, labelled ``"{label} from epoch {epoch + 1}"``.
    The best epoch (lowest ``val_loss``, else ``loss``) is a dotted line, "best N" in the legends.
    """
    n = len(history.get("loss", []))
    epochs = np.arange(1, n + 1)
    keys = ["loss", "accuracy"] + (["learning_rate"] if history.get("learning_rate") else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), layout="constrained", squeeze=False)
    monitor = np.asarray(history.get("val_loss") or history.get("loss") or [], dtype=float)
    monitor[~np.isfinite(monitor)] = np.nan
    best = int(np.nanargmin(monitor)) + 1 if np.isfinite(monitor).any() else None
    for ax, key in zip(axes.flat, keys):
        series = [("learning rate", history[key])] if key == "learning_rate" else [
            (label, history.get(prefix + key)) for prefix, label in (("", "train"), ("val_", "validation"))]
        for label, values in series:
            if values:
                ax.plot(epochs[: len(values)], values, marker="o", markersize=3, label=label)
        if key == "learning_rate":
            rates = np.asarray(history[key], dtype=float)
            if np.all(rates > 0) and rates.max() > 10 * rates.min():
                ax.set_yscale("log")
        if best is not None:
            ax.axvline(best, color="green", linestyle=":", linewidth=1.5, label=f"best {best}")
        for epoch, text in marks:
            if 0 <= epoch < n:
                ax.axvline(epoch + 0.5, color="black", linestyle="--", linewidth=1.2)
                ax.text(epoch + 0.5, 0.97, f" {text} from epoch {epoch + 1}", transform=ax.get_xaxis_transform(),
                        rotation=90, ha="right", va="top", fontsize=8, bbox={"fc": "white", "ec": "none", "alpha": 0.7})
        ax.set_xlim(0.5, max(n, 1) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("epoch")
        ax.set_ylabel(key.replace("_", " "))
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str | Path) -> None:
    """Counts (left) and row-normalised recall per true class (right)."""
    cm = np.asarray(cm)
    n = len(class_names)
    size = max(5.0, 0.55 * n + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    normalised = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    panels = ((axes[0], cm, "counts", "d"), (axes[1], normalised, "normalised by true class", ".2f"))
    for ax, values, title, fmt in panels:
        ConfusionMatrixDisplay(values, display_labels=list(class_names)).plot(
            ax=ax, cmap="Blues", colorbar=False, include_values=n <= 20, values_format=fmt, xticks_rotation=45)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_mistakes(images: np.ndarray, true: Sequence[str], predicted: Sequence[str], confidence: Sequence[float],
                  path: str | Path, names: Sequence[str] | None = None, maps: np.ndarray | None = None,
                  title: str | None = None) -> Figure:
    """A grid of images (n, h, w, c uint8) titled ``true -> predicted (confidence)`` and file names, long
    lines wrapped to the column width, with Grad-CAM ``maps`` (n, h, w in [0, 1]) over them if given;
    returns the (closed) figure."""
    from kerascnn.explain import overlay

    n = len(images)
    cols = min(5, max(1, n))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.2 * rows), squeeze=False, layout="constrained")
    wrap = textwrap.TextWrapper(width=30, max_lines=3, placeholder="…")
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        image = images[i]
        if maps is not None:
            ax.imshow(overlay(image, maps[i]))
        else:
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image,
                      cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255)
        lines = [f"true: {true[i]}", f"pred: {predicted[i]} ({confidence[i]:.0%})"]
        if names is not None:
            lines.append(str(names[i]))
        ax.set_title("\n".join(part for line in lines for part in wrap.wrap(line)), fontsize=8)
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "no mistakes on the test set", ha="center", va="center")
    heading = f"most confident mistakes ({n})" if n else "mistakes"
    fig.suptitle(f"{heading}: {title}" if title and n else heading, fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def plot_reliability(table: dict[str, np.ndarray], ece: float, path: str | Path) -> Figure:
    """The reliability diagram of `kerascnn.calibration.reliability` bins: accuracy against mean
    confidence per bin (bar widths the bins), the diagonal of perfect calibration, and how many
    images each bin holds; returns the (closed) figure."""
    bins = len(table["count"]) - 1  # the last slot holds confidences of exactly 1: drawn in the top bin
    count = table["count"][:bins].copy()
    correct = table["accuracy"][:bins] * count
    confident = table["confidence"][:bins] * count
    count[-1] += table["count"][bins]
    correct[-1] += table["accuracy"][bins] * table["count"][bins]
    confident[-1] += table["confidence"][bins] * table["count"][bins]
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy, confidence = correct / count, confident / count
    edges = np.linspace(0, 1, bins + 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=(3, 1), sharex=True, layout="constrained")
    filled = count > 0
    top.bar(edges[:-1][filled], accuracy[filled], width=1 / bins, align="edge", edgecolor="black",
            color="tab:blue", label="accuracy")
    top.bar(edges[:-1][filled], (confidence - accuracy)[filled], bottom=accuracy[filled], width=1 / bins,
            align="edge", color="tab:red", alpha=0.3, label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"reliability (ECE {100 * ece:.2f}%)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(edges[:-1], count, width=1 / bins, align="edge", color="grey")
    bottom.set(xlabel="confidence (top probability)", ylabel="images")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def plot_study(configurations: list[dict], curves: dict[str, list[np.ndarray]], path: str | Path) -> Figure:
    """A study's figure: each configuration's validation accuracy per epoch (mean over its runs,
    chosen ones solid, others dashed) and its test accuracy (mean, 95% interval) against training
    time; returns the (closed) figure."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
    colours = plt.get_cmap("tab10")
    for i, entry in enumerate(configurations):
        name, colour = entry["configuration"], colours(i % 10)
        runs = curves.get(name) or []
        if runs:
            length = min(len(r) for r in runs)
            mean = np.mean([r[:length] for r in runs], axis=0)
            left.plot(np.arange(1, length + 1), 100 * mean, color=colour, label=name,
                      linestyle="-" if entry.get("chosen") else "--", linewidth=2 if entry.get("chosen") else 1)
        if entry.get("runs_finished") and entry.get("train_seconds") is not None:
            accuracy = entry["accuracy"]
            low, high = accuracy["ci95"] or (accuracy["mean"], accuracy["mean"])
            below, above = max(0.0, accuracy["mean"] - low), max(0.0, high - accuracy["mean"])  # rounding
            right.errorbar(entry["train_seconds"], 100 * accuracy["mean"], yerr=[[100 * below], [100 * above]],
                           fmt="o" if entry.get("chosen") else "s", color=colour, capsize=3, label=name)
    left.set(title="Validation accuracy (mean over runs; chosen solid)", xlabel="epoch", ylabel="accuracy (%)")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set(title="Test accuracy (95% interval) against training time", xlabel="training seconds per run",
              ylabel="test accuracy (%)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    handles, labels = left.get_legend_handles_labels()
    if not handles:
        handles, labels = right.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)), fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig
