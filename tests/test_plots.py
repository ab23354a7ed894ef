"""Figures of a run: readable epoch axes, phase marks, unclipped titles (no training)."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from kerascnn import plots

HISTORY = {"loss": [1.2, 0.8, 0.9], "accuracy": [0.5, 0.7, 0.72], "val_loss": [1.1, 0.7, 0.75],
           "val_accuracy": [0.55, 0.75, 0.74], "learning_rate": [1e-3, 1e-3, 1e-4], "seconds": [3.0, 2.9, 3.1]}


def visible_xticks(ax):
    lo, hi = ax.get_xlim()
    return [t for t in ax.get_xticks() if lo <= t <= hi]


def vertical_lines_at(ax, x):
    return [line for line in ax.get_lines() if np.allclose(line.get_xdata(), x)]


def in_view(labels, limits, axis):
    lo, hi = sorted(limits)
    return [t for t in labels if lo - 1e-9 * abs(hi - lo) <= t.get_position()[axis] <= hi + 1e-9 * abs(hi - lo)]


def drawn_texts(fig):
    """The texts matplotlib draws: not those of axes that are off (``axis("off")``) or of ticks out of view."""
    texts = list(fig.texts)
    for ax in fig.axes:
        texts += [ax.title, *ax.texts]
        if ax.axison:
            texts += [ax.xaxis.label, ax.yaxis.label, *in_view(ax.get_xticklabels(), ax.get_xlim(), 0),
                      *in_view(ax.get_yticklabels(), ax.get_ylim(), 1)]
        if ax.get_legend():
            texts += ax.get_legend().get_texts()
    return [t for t in texts if t.get_visible() and t.get_text()]


def assert_texts_inside(fig):
    canvas = FigureCanvasAgg(fig)  # the figure comes back closed, without a drawing canvas
    canvas.draw()
    renderer, box = canvas.get_renderer(), fig.bbox
    outside = []
    for text in drawn_texts(fig):
        e = text.get_window_extent(renderer)
        if e.x0 < box.x0 - 1 or e.y0 < box.y0 - 1 or e.x1 > box.x1 + 1 or e.y1 > box.y1 + 1:
            outside.append((text.get_text(), e.bounds))
    assert not outside, f"texts outside the figure {box.bounds}: {outside}"


def test_curves_have_whole_epochs_a_learning_rate_panel_and_the_phase_mark(tmp_path):
    path = tmp_path / "curves.png"
    fig = plots.plot_curves(HISTORY, path, marks=[(2, "unfreeze layer4")])
    assert path.stat().st_size > 0
    axes = fig.axes
    assert len(axes) == 3
    assert "learning rate" in axes[2].get_ylabel()
    for ax in axes:
        ticks = visible_xticks(ax)
        assert ticks and all(t == int(t) and t >= 1 for t in ticks), ticks
        assert vertical_lines_at(ax, 2.5), "no line between epoch 2 and 3, where the new phase starts"
        assert any("unfreeze layer4 from epoch 3" in t.get_text() for t in ax.texts)
        assert "best 2" in [t.get_text() for t in ax.get_legend().get_texts()]
        assert vertical_lines_at(ax, 2)
    assert_texts_inside(fig)


@pytest.mark.parametrize("epochs", [1, 2])
def test_curves_without_learning_rate_or_validation(tmp_path, epochs):
    history = {"loss": [1.0, 0.6][:epochs], "accuracy": [0.4, 0.6][:epochs]}
    fig = plots.plot_curves(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").exists()
    assert len(fig.axes) == 2
    for ax in fig.axes:
        ticks = visible_xticks(ax)
        assert ticks and all(t == int(t) and t >= 1 for t in ticks), ticks
        assert f"best {epochs}" in [t.get_text() for t in ax.get_legend().get_texts()]  # by training loss


def test_one_mistake_with_a_long_file_name_keeps_every_text_inside(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    name = "a_very_long_file_name_from_some_camera_dump_" * 3 + ".jpg"
    path = tmp_path / "mistakes.png"
    fig = plots.plot_mistakes(images, ["golden retriever"], ["labrador retriever"], [0.97], path, names=[name])
    assert path.stat().st_size > 0
    assert_texts_inside(fig)
