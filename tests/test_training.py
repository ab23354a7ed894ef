import mmap
import os

import keras
import numpy as np
import pytest
from run_configs import decided
from sklearn.utils.class_weight import compute_class_weight

from kerascnn import data, keras_compat, models, training
from kerascnn.data.augment import LabelMixing, augmentation
from kerascnn.data.pipeline import Batches
from kerascnn.errors import KerascnnError


def lr_at(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_step_schedule_decays_every_lr_step_epochs():
    schedule = training.learning_rate(decided("digits", "cnn", lr=0.1, lr_step=5, lr_gamma=0.1, epochs=20), 10)
    assert lr_at(schedule, 0) == pytest.approx(0.1)
    assert lr_at(schedule, 49) == pytest.approx(0.1)
    assert lr_at(schedule, 50) == pytest.approx(0.01)
    assert lr_at(schedule, 100) == pytest.approx(0.001)


def test_onecycle_warms_up_to_the_peak_then_anneals():
    schedule = training.learning_rate(decided("digits", "cnn", lr=0.01, epochs=10), 100)
    assert lr_at(schedule, 0) == pytest.approx(0.01 / 25)
    assert lr_at(schedule, 300) == pytest.approx(0.01, rel=1e-3)
    assert lr_at(schedule, 999) < 1e-5


def test_cosine_and_constant():
    config = decided("digits", "cnn", lr=0.02, epochs=4, lr_schedule="cosine")
    schedule = training.learning_rate(config, 10)
    assert lr_at(schedule, 0) == pytest.approx(0.02) and lr_at(schedule, 20) == pytest.approx(0.01, rel=1e-3)
    assert training.learning_rate(decided("digits", "cnn", lr=0.5, lr_schedule="constant"), 10) == 0.5


def test_balanced_class_weights_match_scikit_learn():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 5)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(training.class_weights(labels, 3), expected)
    assert training.class_weights(labels, 4)[3] == 0


def test_batches_shuffle_weight_and_one_hot():
    split = data.Split(np.arange(10) % 2, images=np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1))
    batches = Batches(split, (1, 1, 1), 2, 4, shuffle=True, seed=0, class_weights=np.array([1.0, 3.0]))
    assert len(batches) == 3
    seen = []
    for i in range(len(batches)):
        x, y, w = batches[i]
        np.testing.assert_array_equal(y.argmax(1), x.reshape(-1) % 2)
        np.testing.assert_array_equal(w, np.where(y.argmax(1) == 1, 3.0, 1.0))
        seen += x.reshape(-1).tolist()
    assert sorted(seen) == list(range(10)) and seen != list(range(10))


def test_what_fit_iterates_holds_the_batches_of_each_epoch():
    """On torch, `Batches.for_fit` of an in-memory split is a DataLoader of the very batches, as
    tensors, epoch by epoch (flipped views included); with worker threads, or on another backend,
    it is the PyDataset itself, which Keras runs."""
    split = data.Split(np.arange(10) % 2, images=np.arange(40, dtype=np.uint8).reshape(10, 2, 2, 1))
    batches = Batches(split, (2, 2, 1), 2, 4, shuffle=True, seed=3, class_weights=np.array([1.0, 3.0]), mirror=True)
    fed = batches.for_fit()
    assert Batches(split, (2, 2, 1), 2, 4, workers=2).for_fit().__class__ is Batches
    if keras.backend.backend() != "torch":
        assert fed is batches
        return
    import torch

    resident = batches.on_device(torch.device(keras_compat.torch_device_name()))  # what a GPU gets (on a GPU, there)
    for feed, start in ((fed, 0), (resident, 4)):
        assert len(feed) == len(batches)
        for epoch in (start, start + 1):
            batches.start_at(epoch)
            expected = [batches[i] for i in range(len(batches))]
            batches.start_at(epoch)
            got = list(feed)
            assert len(got) == len(expected)
            for have, want in zip(got, expected):
                assert len(have) == len(want) == 3
                for a, b in zip(have, want):
                    assert a.dtype == {np.dtype("uint8"): torch.uint8, np.dtype("float32"): torch.float32}[b.dtype]
                    np.testing.assert_array_equal(a.cpu().numpy(), b)
            assert batches._epoch == epoch + 1  # a full pass ends the epoch, as Keras' adapter does
        orders = []
        for _ in range(2):  # as Keras iterates: len(feed) batches, never one more
            orders.append(np.concatenate([x.cpu().numpy().reshape(-1) for _, (x, _, _) in zip(range(len(feed)), feed)]))
        assert batches._epoch == start + 4 and not np.array_equal(*orders)


def test_only_in_memory_batches_without_host_augmentation_live_on_a_gpu():
    torch = pytest.importorskip("torch")
    split = data.Split(np.arange(10) % 2, images=np.zeros((10, 2, 2, 1), np.uint8))
    cpu = torch.device("cpu")
    assert Batches(split, (2, 2, 1), 2, 4, shuffle=True, mirror=True, class_weights=np.ones(2))._fits_on(cpu)
    assert not Batches(split, (2, 2, 1), 2, 4, augment=augmentation("none", flip=True))._fits_on(cpu)
    assert not Batches(split, (2, 2, 1), 2, 4, mixing=LabelMixing(mixup=0.2))._fits_on(cpu)
    assert not Batches(split, (2, 2, 1), 2, 4, multiple=2)._fits_on(cpu)
    streamed = data.Split(np.zeros(2, int), paths=["a.png", "b.png"])
    assert not Batches(streamed, (2, 2, 1), 2, 4)._fits_on(cpu)
    small = Batches(split, (2, 2, 1), 2, 4)
    small.RESIDENT_BYTES = split.images.nbytes - 1
    assert not small._fits_on(cpu)
    empty = data.Split(np.zeros(0, int), images=np.zeros((0, 2, 2, 1), np.uint8))
    assert list(Batches(empty, (2, 2, 1), 2, 4).on_device(cpu)) == []


def test_fit_on_a_gpu_takes_the_split_to_the_device_when_an_eighth_of_its_free_memory_holds_it(monkeypatch):
    if keras.backend.backend() != "torch":
        pytest.skip("the torch backend's DataLoader")
    import torch

    split = data.Split(np.arange(10) % 2, images=np.zeros((10, 2, 2, 1), np.uint8))  # 40 bytes
    batches = Batches(split, (2, 2, 1), 2, 4)
    monkeypatch.setattr(keras_compat, "torch_device_name", lambda: "cuda:0")
    monkeypatch.setattr(Batches, "on_device", lambda self, device: ("on", device))
    for free, resident in ((320, True), (319, False)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 1000))
        fed = batches.for_fit()
        if resident:
            assert fed == ("on", torch.device("cuda:0"))
        else:
            assert isinstance(fed, torch.utils.data.DataLoader) and fed.pin_memory


def test_a_model_trains_the_same_on_what_fit_iterates_as_on_the_batches():
    """Through ``model.fit`` as `training.fit` calls it (two epochs, the order set by
    `training.EpochSeeds` and not reshuffled by Keras), the DataLoader of `Batches.for_fit` trains
    to the same weights as the PyDataset, as do the batches a GPU gets (`Batches.on_device`)."""
    pixels = np.random.default_rng(0).integers(0, 256, (24, 8, 8, 1), dtype=np.uint8)
    split = data.Split(np.arange(24) % 3, images=pixels)
    trained = []
    feeds = [lambda b: b, Batches.for_fit]
    if keras.backend.backend() == "torch":  # and the batches a GPU gets (`Batches.on_device`), on Keras' device
        import torch

        feeds.append(lambda b: b.on_device(torch.device(keras_compat.torch_device_name())))
    for feed in feeds:
        keras.utils.set_random_seed(0)
        model = models.build("cnn", (8, 8, 1), 3, sample=split.images, dropout=0.0, head_dropout=0.0)
        training.compile_model(model, decided("t", "cnn", epochs=2, weights="none"), steps_per_epoch=3)
        batches = Batches(split, (8, 8, 1), 3, 8, shuffle=True, seed=1)
        model.fit(feed(batches), epochs=2, shuffle=False, verbose=0, callbacks=[training.EpochSeeds(batches, 0)])
        trained.append(model.get_weights())
    for other in trained[1:]:
        for a, b in zip(trained[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_flips_run_in_numpy_on_about_half_the_images_seeded_by_epoch_and_batch():
    images = np.random.default_rng(0).integers(0, 256, (400, 5, 6, 1), dtype=np.uint8)
    split = data.Split(np.zeros(400, int), images=images)
    batches = Batches(split, (5, 6, 1), 2, 400, augment=augmentation("none", flip=True), seed=3)
    assert batches.augment.flip and not batches.augment.geometric and batches.augment.randaugment is None
    x = batches[0][0]
    flipped = np.all(x == images[:, :, ::-1], axis=(1, 2, 3))
    assert x.dtype == np.uint8 and np.all(flipped | np.all(x == images, axis=(1, 2, 3)))
    assert 150 < flipped.sum() < 250
    np.testing.assert_array_equal(batches[0][0], x)  # the same batch of the same epoch
    batches.on_epoch_end()
    assert not np.array_equal(batches[0][0], x)
    rest = Batches(split, (5, 6, 1), 2, 8, augment=augmentation("none", flip=True, rotate=10))
    assert rest.augment.flip and [type(layer).__name__ for layer in rest.augment.geometric] == ["RandomRotation"]


def test_augmentation_changes_images_but_not_their_shape():
    x = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3)).astype("float32")
    out = augmentation("strong")(x.copy(), np.random.default_rng(0))
    assert out.shape == x.shape and not np.allclose(out, x)
    assert augmentation("none") is None
    names = [type(layer).__name__ for layer in augmentation("none", flip=True, rotate=10, translate=0.1).layers]
    assert names == ["RandomFlip", "RandomRotation", "RandomTranslation"]


def test_streamed_batches_drop_files_that_went_bad(colour_folder):
    ds = data.load(f"folder:{colour_folder}", image_size=8)
    victim = ds.train.paths[0]
    open(victim, "wb").write(b"broken")
    batches = Batches(ds.train, ds.image_shape, ds.num_classes, 64)
    x, y = batches[0]
    assert len(x) == len(ds.train) - 1 and x.shape[1:] == (8, 8, 3)
    assert batches.skipped == {victim}


class SpoilFrom(keras.callbacks.Callback):
    """Scrambles the weights before every epoch from ``epoch`` (0-based) on, so none of those can be
    the best one: the best is earlier, and later validation losses stay worse."""

    def __init__(self, epoch):
        super().__init__()
        self.first = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch >= self.first:
            rng = np.random.default_rng(epoch)
            for w in self.model.trainable_weights:
                value = keras.ops.convert_to_numpy(w)
                w.assign(value + rng.normal(0, 1.0, value.shape).astype(value.dtype))


MODES = {  # name: RunConfig options, first spoiled epoch (0-based), epochs expected to run (None: fewer than all)
    "one phase, early stopping on": ({"epochs": 4, "patience": 4}, 3, 4),
    "one phase, early stopping off": ({"epochs": 4, "patience": 0}, 3, 4),
    "one phase, stopped early": ({"epochs": 8, "patience": 2}, 3, None),
    "two phases": ({"epochs": 5, "patience": 4, "unfreeze_at": 2, "unfreeze": "all"}, 3, 5),
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_the_saved_model_holds_the_best_validation_epoch_of_the_whole_run(mode, tmp_path):
    from kerascnn.saving import load_model, save_model

    options, spoiled, epochs = MODES[mode]
    keras.utils.set_random_seed(0)
    ds = data.load("digits")
    config = decided("digits", "cnn", lr_schedule="constant", verbose=0, **options)
    model = models.build("cnn", ds.image_shape, ds.num_classes)
    result = training.fit(model, ds, config, run_dir=tmp_path, callbacks=[SpoilFrom(spoiled)])
    val_loss = result.history["val_loss"]
    assert result.best_epoch == int(np.argmin(val_loss)) + 1 <= spoiled
    assert result.stopped_early == (epochs is None)
    if epochs is None:  # stopped `patience` epochs after the best, before its last epoch
        epochs = result.best_epoch + config.patience
        assert epochs < config.epochs
    assert result.epochs_run == epochs
    save_model(model, tmp_path / "model.keras", {})
    saved, _ = load_model(tmp_path / "model.keras")
    val = training.eval_batches(ds, "val", 256)
    assert model.evaluate(val, verbose=0, return_dict=True)["loss"] == pytest.approx(min(val_loss), rel=1e-4)
    best_file = models.build("cnn", ds.image_shape, ds.num_classes)
    best_file.load_weights(tmp_path / "best.weights.h5")
    x = np.concatenate([val[i][0] for i in range(len(val))])
    np.testing.assert_allclose(saved.predict(x, verbose=0), best_file.predict(x, verbose=0), atol=1e-5)
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert len(lines) == epochs + 1 and [line.split(",")[0] for line in lines[1:]] == [
        str(e) for e in range(1, epochs + 1)]
    assert set(result.history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"}


def test_divergence_is_reported_with_a_fix():
    ds = data.load("digits")
    config = decided("digits", "cnn", epochs=2, optimizer="sgd", lr=1e12, lr_schedule="constant", verbose=0)
    model = models.build("cnn", ds.image_shape, ds.num_classes, batch_norm=False, dropout=0.0)
    with pytest.raises(KerascnnError, match="lower --lr") as error:
        training.fit(model, ds, config)
    assert "--optimizer sgd" not in str(error.value)  # the run already used sgd


def test_progress_is_one_line_per_epoch_when_the_output_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert training.progress_verbosity("auto") == 2 and training.progress_verbosity(1) == 1
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert training.progress_verbosity("auto") == 1


def test_batches_for_several_devices_pad_the_last_batch_with_zero_weights():
    split = data.Split(np.arange(7) % 2, images=np.arange(7, dtype=np.uint8).reshape(7, 1, 1, 1))
    batches = Batches(split, (1, 1, 1), 2, 4, multiple=2)
    x, y, w = batches[0]
    assert len(x) == 4 and w.tolist() == [1, 1, 1, 1]
    x, y, w = batches[1]
    assert len(x) == 4 and w.tolist() == [1, 1, 1, 0] and x.reshape(-1).tolist() == [4, 5, 6, 4]


@pytest.mark.slow
def test_a_seed_makes_a_run_repeatable():
    ds = data.load("digits", split="30,5,5")
    config = decided("digits", "cnn", epochs=2, batch_size=32, augment="basic", seed=7, verbose=0)

    def train():
        keras.utils.set_random_seed(config.seed)
        model = models.build("cnn", ds.image_shape, ds.num_classes)
        history = training.fit(model, ds, config).history
        return history["loss"], [keras.ops.convert_to_numpy(w) for w in model.weights]

    (loss_a, weights_a), (loss_b, weights_b) = train(), train()
    assert loss_a == loss_b
    assert all(np.array_equal(a, b) for a, b in zip(weights_a, weights_b))


def test_a_nan_epoch_is_never_the_best(tmp_path):
    model = models.build("cnn", (8, 8, 1), 2, filters=[4], dense=[])
    best = training.BestEpoch("val_loss", tmp_path / "best.weights.h5")
    best.set_model(model)
    for epoch, value in enumerate([float("nan"), 0.9, float("inf"), 0.7, float("nan")]):
        best.on_epoch_end(epoch, {"val_loss": value})
    assert best.epoch == 4 and best.value == 0.7 and (tmp_path / "best.weights.h5").is_file()


def test_the_checkpoint_of_a_best_epoch_is_the_best_epoch_s_file_and_other_epochs_are_saved(tmp_path, monkeypatch):
    """The best epoch's weights are serialised once (`BestEpoch`) and copied into the checkpoint;
    an epoch that is not the best has its own weights saved; every checkpoint reloads its epoch."""
    from kerascnn import checkpoint

    model = models.build("cnn", (8, 8, 1), 2, filters=[4], dense=[])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    best = training.BestEpoch("val_loss", tmp_path / "best.weights.h5")
    saver = checkpoint.EpochCheckpoint(tmp_path, best, {}, last_epoch=3)
    calls, save_weights = [], keras.Model.save_weights
    monkeypatch.setattr(keras.Model, "save_weights", lambda self, path, **kw: calls.append(path) or save_weights(
        self, path, **kw))
    weights = []
    for epoch, val_loss in enumerate([0.9, 0.8, 1.5]):
        for w in model.trainable_weights:
            w.assign(w + 0.01)
        weights.append(model.get_weights())
        for callback in (best, saver):
            callback.set_model(model)
            callback.on_epoch_end(epoch, {"loss": 1.0, "val_loss": val_loss})
        folder = tmp_path / checkpoint.FOLDER
        if epoch < 2:
            assert (folder / f"model-{epoch + 1}.weights.h5").read_bytes() == best.path.read_bytes()
    assert [p.name for p in calls] == [".partial-best.weights.h5", ".partial-best.weights.h5",
                                         ".partial-model-3.weights.h5"]
    assert sorted(p.name for p in folder.iterdir()) == ["model-2.weights.h5", "model-3.weights.h5", "optimizer-3.npz",
                                                      "state.json"]
    for epoch in (2, 3):
        checkpoint.restore_weights(tmp_path, model, epoch)
        for a, b in zip(model.get_weights(), weights[epoch - 1]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
def test_each_run_reports_its_own_peak_memory_not_the_process_s():
    from kerascnn import distribute

    distribute.reset_peak_memory()
    if distribute.peak_memory()["memory"] != "process":
        pytest.skip("an accelerator's peak is reported instead")
    before = distribute.peak_memory()["peak_memory_mb"]
    # 256 MiB mapped and touched directly, so no allocator keeps it after it is freed
    block = mmap.mmap(-1, 256 * 2**20)
    pages = np.frombuffer(block, np.uint8)
    pages[:] = 1
    during = distribute.peak_memory()["peak_memory_mb"]
    del pages
    block.close()
    distribute.reset_peak_memory()  # the next run of a study in this process
    after = distribute.peak_memory()
    assert during >= before + 250 and after["peak_memory_mb"] < during - 200
