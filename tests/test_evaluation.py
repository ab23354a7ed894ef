import numpy as np
import pytest

from kerascnn import evaluation, stats


def one_hot_proba(pred, n, confidence):
    proba = np.full((len(pred), n), (1 - np.asarray(confidence))[:, None] / (n - 1))
    proba[np.arange(len(pred)), pred] = confidence
    return proba


def test_metrics_of_a_known_prediction():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 1, 2, 0])
    m = evaluation.classification_metrics(y, one_hot_proba(pred, 3, np.full(8, 0.8)), ["a", "b", "c"], top_k=2)
    assert m["accuracy"] == pytest.approx(6 / 8)
    # per class: a P=3/4 R=3/4, b P=2/3 R=1, c P=1 R=1/2
    assert m["per_class"]["a"] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4})
    assert m["per_class"]["c"]["recall"] == pytest.approx(0.5)
    assert m["macro_recall"] == pytest.approx((0.75 + 1 + 0.5) / 3)
    assert m["weighted_recall"] == pytest.approx(6 / 8)
    assert m["macro_precision"] == pytest.approx((0.75 + 2 / 3 + 1) / 3)
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["confusion_matrix_normalized"][2] == [0.5, 0.0, 0.5]
    assert m["top_k_accuracy"]["2"] >= m["accuracy"]
    lo, hi = m["accuracy_ci95"]
    assert lo < 0.75 < hi


def test_a_class_never_predicted_scores_zero_precision():
    y = np.array([0, 1, 2])
    m = evaluation.classification_metrics(y, one_hot_proba(np.array([0, 1, 1]), 3, np.full(3, 0.9)), ["a", "b", "c"])
    assert m["per_class"]["c"]["precision"] == 0.0 and m["per_class"]["c"]["support"] == 1


def test_wilson_interval():
    lo, hi = stats.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert stats.wilson_interval(0, 0) == (0.0, 0.0)


@pytest.mark.parametrize("total", [1, 7, 269, 10000])
def test_wilson_interval_holds_the_estimate_at_0_and_100_percent(total):
    assert stats.wilson_interval(total, total)[1] == 1.0  # rounding gave 0.9999999999999999 at 269
    assert stats.wilson_interval(0, total)[0] == 0.0


def test_most_confident_mistakes_come_first():
    y = np.array([0, 0, 1, 1])
    proba = one_hot_proba(np.array([1, 0, 0, 0]), 2, np.array([0.6, 0.9, 0.95, 0.7]))
    assert evaluation.most_confident_mistakes(y, proba).tolist() == [2, 3, 0]
    assert evaluation.most_confident_mistakes(y, proba, limit=1).tolist() == [2]


@pytest.mark.parametrize("streamed", [False, True])
def test_flip_tta_averages_each_test_image_with_its_mirror(streamed, colour_folder, tmp_path):
    """--tta flip: metrics of (p(x) + p(mirror of x)) / 2, computed here by hand from the model, and
    the scores without it beside them; on arrays and on files decoded while streaming."""
    from kerascnn import data, models, runner
    from kerascnn.config import RunConfig

    name = f"folder:{colour_folder}" if streamed else "digits"
    dataset = data.load(name, image_size=16, split=None if streamed else "40,10,30")
    assert dataset.streamed == streamed
    model = models.build("cnn", dataset.image_shape, dataset.num_classes, image_size=16)
    config = RunConfig(name, "cnn", tta="flip", batch_size=8).validate()
    metrics = runner.evaluate_run(model, dataset, config, tmp_path)

    images = dataset.test.pixels(np.arange(len(dataset.test)), dataset.image_shape)
    plain = np.asarray(model.predict(images, verbose=0), np.float64)
    mirrored = np.asarray(model.predict(images[:, :, ::-1], verbose=0), np.float64)
    expected = evaluation.classification_metrics(dataset.test.labels, (plain + mirrored) / 2, dataset.class_names)
    without = evaluation.classification_metrics(dataset.test.labels, plain, dataset.class_names)
    assert metrics["tta"] == "flip"
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    assert metrics["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert metrics["without_tta"]["accuracy"] == pytest.approx(without["accuracy"])
    assert metrics["without_tta"]["macro_f1"] == pytest.approx(without["macro_f1"])
    assert not np.allclose(plain, mirrored)  # the mirror changes the input the model sees


def test_bootstrap_f1_intervals_agree_with_scikit_learn_and_contain_the_estimate():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 600)
    pred = np.where(rng.random(600) < 0.7, y, rng.integers(0, 4, 600))
    intervals = evaluation.bootstrap_f1_intervals(y, pred, 4, resamples=400)
    assert intervals == evaluation.bootstrap_f1_intervals(y, pred, 4, resamples=400)  # seeded
    for average in ("macro", "weighted"):
        lo, hi = intervals[f"{average}_f1_ci95"]
        estimate = f1_score(y, pred, average=average)
        assert lo < estimate < hi and 0.03 < hi - lo < 0.15  # about 2 x 1.96 x sqrt(p(1-p)/n) wide
    # one resample is one draw of n images: replayed here, its F1 is scikit-learn's on those images
    index = np.random.default_rng(0).integers(0, 600, (1, 600))[0]
    one = evaluation.bootstrap_f1_intervals(y, pred, 4, resamples=1)
    assert one["macro_f1_ci95"][0] == pytest.approx(f1_score(y[index], pred[index], average="macro"))
    perfect = evaluation.bootstrap_f1_intervals(y, y, 4, resamples=50)
    assert perfect["macro_f1_ci95"] == [1.0, 1.0]
