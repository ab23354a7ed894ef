import numpy as np

from kerascnn.data.splits import carve_validation, stratified_split


def labels_of(counts):
    return np.concatenate([np.full(n, c) for c, n in enumerate(counts)])


def test_counts_split_is_balanced_disjoint_and_seeded():
    labels = labels_of([500, 460, 451])
    (train, val, test), notes = stratified_split(labels, "counts", (300, 75, 75), seed=1)
    for part, n in ((train, 300), (val, 75), (test, 75)):
        assert np.bincount(labels[part]).tolist() == [n, n, n]
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert notes == []
    again, _ = stratified_split(labels, "counts", (300, 75, 75), seed=1)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    other, _ = stratified_split(labels, "counts", (300, 75, 75), seed=2)
    assert not np.array_equal(train, other[0])


def test_short_class_is_split_in_the_same_proportions_with_a_note():
    labels = labels_of([450, 60])
    (train, val, test), notes = stratified_split(labels, "counts", (300, 75, 75), seed=0)
    assert np.bincount(labels[train]).tolist() == [300, 40]
    assert np.bincount(labels[val]).tolist() == [75, 10]
    assert np.bincount(labels[test]).tolist() == [75, 10]
    assert len(notes) == 1 and "1:60" in notes[0]


def test_fraction_split_covers_every_image_once():
    labels = labels_of([100, 41, 7])
    (train, val, test), _ = stratified_split(labels, "fractions", (0.7, 0.15, 0.15), seed=0)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[test]).tolist() == [15, 6, 1]


def test_carve_validation_takes_a_fraction_of_each_class():
    labels = labels_of([1000, 200, 2])
    train, val = carve_validation(labels, 0.1, seed=0)
    assert np.bincount(labels[val]).tolist() == [100, 20, 1]
    assert len(train) + len(val) == len(labels) and not set(train) & set(val)
    train, val = carve_validation(labels, 0.0, seed=0)
    assert len(val) == 0 and len(train) == len(labels)
