"""Figures of a run (matplotlib, Agg): learning curves, confusion matrix, most confident mistakes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402


def plot_curves(history: dict[str, list[float]], path: str | Path, marks: Sequence[tuple[int, str]] = ()) -> None:
    """Loss and accuracy per epoch, train and validation; ``marks`` are (epoch, label) lines."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + key)
            if values:
                ax.plot(epochs[: len(values)], values, marker="o", markersize=3, label=label)
        for epoch, text in marks:
            ax.axvline(epoch + 0.5, color="grey", linestyle="--", linewidth=1)
            ax.text(epoch + 0.6, ax.get_ylim()[1], text, va="top", fontsize=8, color="grey")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
                  path: str | Path, names: Sequence[str] | None = None) -> None:
    """A grid of images (n, h, w, c uint8) titled ``true -> predicted (confidence)`` and file names."""
    n = len(images)
    cols = min(5, max(1, n))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        image = images[i]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None,
                  vmin=0, vmax=255)
        title = f"true: {true[i]}\npred: {predicted[i]} ({confidence[i]:.0%})"
        if names is not None:
            title += f"\n{names[i]}"
        ax.set_title(title, fontsize=8)
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "no mistakes on the test set", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
