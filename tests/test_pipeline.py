"""The decoded-image cache, batched geometric augmentation and label mixing of the input pipeline."""

from __future__ import annotations

import logging
import os
import time

import keras
import numpy as np
import pytest
from helpers import write_folder
from PIL import Image

from kerascnn import data
from kerascnn.data import cache
from kerascnn.data.augment import (
    Augmenter,
    LabelMixing,
    RandAugment,
    RandomErasing,
    affine_matrices,
    augmentation,
    resample,
)
from kerascnn.data.images import read_image
from kerascnn.data.pipeline import Batches


def _splits(ds):
    return {s: getattr(ds, s) for s in ("train", "val", "test")}


@pytest.fixture
def photos(tmp_path):
    """A folder of JPEG photos of mixed sizes (the decoder resizes and centre-crops them)."""
    rng = np.random.default_rng(0)
    for i in range(40):
        folder = tmp_path / "photos" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = [(30, 20), (17, 25), (40, 40)][i % 3]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return tmp_path / "photos"


@pytest.mark.parametrize("mode", ["ram", "disk"])
def test_the_cache_holds_exactly_the_decoded_images(photos, mode):
    ds = data.load(f"folder:{photos}", image_size=12)
    where = cache.decode_splits(_splits(ds), ds.image_shape, mode)
    assert "40 decoded now" in where
    for split in _splits(ds).values():
        expected = np.stack([read_image(p, ds.image_shape) for p in split.paths])
        np.testing.assert_array_equal(split.decoded.pixels, expected)
        assert split.decoded.readable.all()
        x, _ = Batches(split, ds.image_shape, ds.num_classes, 64)[0]
        np.testing.assert_array_equal(x, expected)
    streamed = data.Split(ds.train.labels, paths=ds.train.paths)  # the same files without the cache
    augmented = [Batches(s, ds.image_shape, ds.num_classes, 8, shuffle=True, seed=1,
                         augment=augmentation("strong"))[2][0] for s in (ds.train, streamed)]
    np.testing.assert_array_equal(*augmented)
    assert (ds.train.decoded.where == "ram") == (mode == "ram")


def test_decoding_in_several_threads_equals_decoding_in_one(tmp_path):
    root = write_folder(tmp_path / "many", per_class=50, size=9)  # 150 files: three tasks of the pool
    paths = sorted(str(p) for p in root.rglob("*.png"))
    here, there = (np.zeros((len(paths), 9, 9, 3), np.uint8) for _ in range(2))
    assert cache.decode_into(here, paths, (9, 9, 3), threads=1).all()
    assert cache.decode_into(there, paths, (9, 9, 3), threads=3).all()
    np.testing.assert_array_equal(here, there)
    assert here.any()


def test_a_disk_entry_is_reused_and_auto_finds_it(photos):
    ds = data.load(f"folder:{photos}", image_size=12)
    cache.decode_splits(_splits(ds), ds.image_shape, "disk")
    again = data.load(f"folder:{photos}", image_size=12)
    where = cache.decode_splits(_splits(again), again.image_shape, "auto")
    assert "all reused" in where and str(cache.cache_dir()) in where
    np.testing.assert_array_equal(again.train.decoded.pixels, ds.train.decoded.pixels)
    assert isinstance(again.train.decoded.pixels, np.memmap)


def test_the_key_changes_with_the_file_list_the_size_and_a_changed_file(photos):
    paths = sorted(str(p) for p in photos.rglob("*.jpg"))
    key = cache.cache_key(paths, (12, 12, 3))
    assert cache.cache_key(list(paths), (12, 12, 3)) == key
    assert cache.cache_key(paths[1:], (12, 12, 3)) != key
    assert cache.cache_key(paths, (16, 16, 3)) != key
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))  # a rewrite within the clock's resolution still changes the size
    assert cache.cache_key(paths, (12, 12, 3)) != key


def test_auto_keeps_images_in_ram_when_they_fit_else_on_disk(photos, monkeypatch):
    ds = data.load(f"folder:{photos}", image_size=12)
    assert "in RAM" in cache.decode_splits(_splits(ds), ds.image_shape, "auto")
    monkeypatch.setattr(cache, "available_memory", lambda: 1000)
    ds = data.load(f"folder:{photos}", image_size=12)
    assert str(cache.cache_dir()) in cache.decode_splits(_splits(ds), ds.image_shape, "auto")
    assert cache.decode_splits(_splits(ds), ds.image_shape, "none") == ""


def test_a_file_corrupted_after_loading_is_skipped_and_reported_once(photos, caplog):
    ds = data.load(f"folder:{photos}", image_size=12)
    victim = ds.train.paths[3]
    open(victim, "wb").write(b"broken")
    cache.decode_splits(_splits(ds), ds.image_shape, "disk")
    assert ds.train.decoded.readable.sum() == len(ds.train) - 1
    batches = Batches(ds.train, ds.image_shape, ds.num_classes, 8, shuffle=True)
    with caplog.at_level(logging.WARNING, logger="kerascnn"):
        for _ in range(2):
            count = sum(len(batches[b][0]) for b in range(len(batches)))
            batches.on_epoch_end()
    assert count == len(ds.train) - 1 and batches.skipped == {victim}
    assert sum(victim in r.getMessage() for r in caplog.records) == 1
    reloaded = data.load(f"folder:{photos}", image_size=12)  # the loader now leaves the file out
    assert victim not in set(reloaded.train.paths)


def test_a_file_that_failed_only_for_a_moment_is_decoded_again_by_the_next_run(photos, monkeypatch):
    ds = data.load(f"folder:{photos}", image_size=12)
    victim, original = ds.train.paths[0], cache.read_image

    def flaky(path, shape):
        if path == victim:
            raise OSError("Input/output error")  # an NFS hiccup, say: the file itself is fine
        return original(path, shape)

    monkeypatch.setattr(cache, "read_image", flaky)
    cache.decode_splits(_splits(ds), ds.image_shape, "disk")
    assert not ds.train.decoded.readable[0]
    monkeypatch.setattr(cache, "read_image", original)
    again = data.load(f"folder:{photos}", image_size=12)
    assert "decoded now" in cache.decode_splits(_splits(again), again.image_shape, "disk")
    assert again.train.decoded.readable.all()
    np.testing.assert_array_equal(again.train.decoded.pixels[0], read_image(victim, again.image_shape))


def test_one_process_writes_an_entry_while_another_waits_and_reads_it(photos, monkeypatch):
    import threading

    calls, original = [], cache.decode_into

    def slow_decode(pixels, paths, shape, threads=None):
        calls.append(len(paths))
        time.sleep(0.3)
        return original(pixels, paths, shape, threads)

    monkeypatch.setattr(cache, "decode_into", slow_decode)
    datasets = [data.load(f"folder:{photos}", image_size=12) for _ in range(2)]
    stale = cache.cache_dir() / f"{cache.cache_key(datasets[0].train.paths, (12, 12, 3))}.1234.partial.npy"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"left by a killed writer")
    workers = [threading.Thread(target=cache.decode_splits, args=(_splits(ds), ds.image_shape, "disk"))
               for ds in datasets]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(calls) == sorted(len(s) for s in _splits(datasets[0]).values())  # each split decoded once
    np.testing.assert_array_equal(datasets[0].train.decoded.pixels, datasets[1].train.decoded.pixels)
    assert not stale.exists() and not list(cache.cache_dir().glob("*partial*"))


def test_a_damaged_entry_is_written_again_and_a_full_disk_is_a_one_line_error(photos, monkeypatch):
    from kerascnn.errors import KerascnnError

    ds = data.load(f"folder:{photos}", image_size=12)
    cache.decode_splits(_splits(ds), ds.image_shape, "disk")
    key = cache.cache_key(ds.train.paths, ds.image_shape)
    damaged = cache.cache_dir() / "damaged.npy"  # replaced, not rewritten in place: ds still maps the old file
    np.save(damaged, np.zeros((3, 12, 12, 3), np.uint8))  # not what the JSON says
    os.replace(damaged, cache.cache_dir() / f"{key}.npy")
    again = data.load(f"folder:{photos}", image_size=12)
    assert "decoded now" in cache.decode_splits(_splits(again), again.image_shape, "disk")
    np.testing.assert_array_equal(again.train.decoded.pixels, ds.train.decoded.pixels)
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: shutil_usage(free=1000))
    other = data.load(f"folder:{photos}", image_size=16)
    # amounts a person can read: the images and the margin, and what is free (not "0.00 GiB")
    with pytest.raises(KerascnnError, match=r"needs 256\.\d MiB .* and 0\.0 MiB are free; free some, point "
                                            r".KERASCNN_CACHE elsewhere") as info:
        cache.decode_splits(_splits(other), other.image_shape, "disk")
    assert "\n" not in str(info.value)


def shutil_usage(free: int):
    import shutil

    return shutil._ntuple_diskusage(10**12, 10**12 - free, free)


def test_ram_entries_are_read_only_and_statistics_leave_unreadable_files_out(photos):
    ds = data.load(f"folder:{photos}", image_size=12)
    for path in ds.train.paths[:len(ds.train) - 2]:
        open(path, "wb").write(b"broken")
    cache.decode_splits(_splits(ds), ds.image_shape, "ram")
    assert not ds.train.decoded.pixels.flags.writeable
    sample = ds.statistics_sample(seed=0)
    assert len(sample) == 2 and sample.reshape(2, -1).any(axis=1).all()


def test_the_cache_command_lists_entries_and_removes_the_unused_ones(photos, capsys, monkeypatch, tmp_path):
    from experiments import cache as cache_cli

    monkeypatch.setenv("KERASCNN_CACHE", str(tmp_path / "cache"))  # this test's own entries only
    ds = data.load(f"folder:{photos}", image_size=12)
    cache.decode_splits(_splits(ds), ds.image_shape, "disk")
    big = data.load(f"folder:{photos}", image_size=16)
    cache.decode_splits({"train": big.train}, big.image_shape, "disk")
    (cache.cache_dir() / "0123.5f3a.partial.npy").write_bytes(b"x" * 100)  # a killed write
    found = {e.key: e for e in cache.entries()}
    assert len(found) == 5 and sum(e.complete for e in found.values()) == 4
    train = found[cache.cache_key(ds.train.paths, ds.image_shape)]
    assert (train.files, train.shape, train.first) == (len(ds.train), (12, 12, 3), str(ds.train.paths[0]))
    assert train.bytes > len(ds.train) * 12 * 12 * 3
    assert cache_cli.main(cache_cli.body, cache_cli.parser(), []) == 0
    listing = capsys.readouterr().out
    assert "5 entries" in listing and "incomplete" in listing and str(ds.train.paths[0]) in listing

    old = time.time() - 10 * 86400
    for key in (train.key, "0123"):
        for path in cache.cache_dir().glob(f"{key}.*"):
            os.utime(path, (old, old))
    assert cache_cli.main(cache_cli.body, cache_cli.parser(), ["--unused-for", "5"]) == 0
    assert "removed 2 entries" in capsys.readouterr().out
    assert {e.key for e in cache.entries()} == set(found) - {train.key, "0123"}
    again = data.load(f"folder:{photos}", image_size=12)  # a run that needs the removed entry decodes again
    assert f"{len(again.train)} decoded now" in cache.decode_splits({"train": again.train}, again.image_shape, "disk")
    val_key = cache.cache_key(again.val.paths, again.image_shape)
    for path in cache.cache_dir().glob(f"{val_key}.*"):
        os.utime(path, (old, old))
    assert "all reused" in cache.decode_splits({"val": again.val}, again.image_shape, "disk")
    assert {e.key: e for e in cache.entries()}[val_key].last_used > time.time() - 600  # reading marks it used

    assert cache_cli.main(cache_cli.body, cache_cli.parser(), ["--unused-for", "-1"]) == 2
    assert "--unused-for" in capsys.readouterr().err
    assert cache_cli.main(cache_cli.body, cache_cli.parser(), ["--clear"]) == 0
    assert cache.entries() == [] and "removed 4 entries" in capsys.readouterr().out


class Drawn:
    """A stand-in for a NumPy generator whose ``uniform`` returns given values in turn."""

    def __init__(self, *values: np.ndarray) -> None:
        self.values = list(values)

    def uniform(self, low, high, size):
        return np.asarray(self.values.pop(0), np.float64).reshape(size)


def _smooth(n: int, size: int, channels: int = 3) -> np.ndarray:
    coarse = np.random.default_rng(1).uniform(0, 255, (n, 4, 4, channels)).astype("float32")
    return keras.ops.convert_to_numpy(keras.ops.image.resize(coarse, (size, size), interpolation="bilinear"))


@pytest.mark.parametrize("name", ["rotation", "translation", "zoom"])
def test_one_batched_resample_equals_the_keras_layer_with_the_same_parameters(name):
    x = _smooth(6, 20)
    layer = {"rotation": keras.layers.RandomRotation(0.1, fill_mode="constant", seed=2),
             "translation": keras.layers.RandomTranslation(0.2, 0.3, fill_mode="constant", seed=2),
             "zoom": keras.layers.RandomZoom(0.3, fill_mode="constant", seed=2)}[name]
    drawn = layer.get_random_transformation(x, training=True)
    values = {"rotation": lambda t: [t["angle"]],
              "translation": lambda t: [t["translations"][:, 1] / 20, t["translations"][:, 0] / 20],
              "zoom": lambda t: [t["height_zoom"] - 1]}[name](
        {k: keras.ops.convert_to_numpy(v) for k, v in drawn.items() if k in ("angle", "translations", "height_zoom")})
    expected = keras.ops.convert_to_numpy(layer.transform_images(x, drawn, training=True))
    ours = resample(x, affine_matrices(layer, 6, 20, 20, Drawn(*values)))
    assert not np.allclose(expected, x, atol=1.0)  # the layer did move the pixels
    np.testing.assert_allclose(ours, expected, atol=1e-2)


def test_only_constant_zero_fill_and_bilinear_layers_are_resampled_in_batches():
    with pytest.raises(ValueError, match="only fill_mode='constant'"):
        Augmenter([keras.layers.RandomRotation(0.1)])  # Keras' default fill is reflect


def test_several_geometric_layers_are_one_resample_in_the_layers_order():
    x = _smooth(4, 24)
    geometric = augmentation("strong").geometric
    names = [type(la).__name__ for la in geometric]
    assert names == ["RandomZoom", "RandomRotation", "RandomTranslation"]
    rng = np.random.default_rng(5)
    maps = [affine_matrices(layer, 4, 24, 24, rng) for layer in geometric]
    one = resample(x, maps[0] @ maps[1] @ maps[2])
    step_by_step = x
    for m in maps:
        step_by_step = resample(step_by_step, m)
    inner = (slice(None), slice(6, 18), slice(6, 18))  # away from the zero fill, where only interpolation differs
    assert np.abs(one[inner] - step_by_step[inner]).mean() < 2.0


def test_augmentation_is_drawn_from_the_batch_generator_so_a_batch_replays_exactly():
    images = np.random.default_rng(0).integers(0, 256, (16, 12, 12, 3), dtype=np.uint8)
    split = data.Split(np.arange(16) % 2, images=images)
    batches = Batches(split, (12, 12, 3), 2, 16, shuffle=True, seed=4, augment=augmentation("basic", rotate=20))
    assert batches.augment.flip and len(batches.augment.geometric) == 2
    first = batches[0][0]
    assert first.dtype == np.float32 and first.shape == images.shape
    np.testing.assert_array_equal(batches[0][0], first)
    batches.start_at(1)
    assert not np.array_equal(batches[0][0], first)
    batches.start_at(0)
    np.testing.assert_array_equal(batches[0][0], first)
    with pytest.raises(ValueError, match="RandomContrast is not"):
        Augmenter([keras.layers.RandomContrast(0.2)])


def test_random_erasing_replaces_one_box_per_chosen_image_with_noise():
    images = np.full((400, 20, 30, 3), 7, np.uint8)  # 7 nowhere else: noise equals it with odds 1/256
    out = RandomErasing(0.5)(images.copy(), np.random.default_rng(0))
    assert out.dtype == np.uint8
    changed = (out != 7).any(axis=3)
    erased = changed.any(axis=(1, 2))
    assert 0.4 < erased.mean() < 0.6
    for mask in changed[erased]:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        assert mask.sum() >= 0.95 * box  # one rectangle of noise (a pixel drawn as 7 reads unchanged)
        assert 0.02 * 600 / 2 <= box <= 600 / 3 * 1.3  # the area range, up to rounding of each side
    np.testing.assert_array_equal(RandomErasing(0.0)(images.copy(), np.random.default_rng(0)), images)
    again = RandomErasing(0.5)(images.copy(), np.random.default_rng(0))
    np.testing.assert_array_equal(again, out)
    # after the other augmentations, in place on the batch's own copy; the split's images stay as they were
    split = data.Split(np.arange(16) % 2, images=np.full((16, 12, 12, 1), 7, np.uint8))
    batches = Batches(split, (12, 12, 1), 2, 16, shuffle=True, augment=augmentation("none", flip=True, erase=1.0))
    assert (batches[0][0] != 7).any(axis=(1, 2, 3)).all() and (split.images == 7).all()


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_and_cutmix_mix_images_and_labels_alike(mixup, cutmix):
    images = np.concatenate([np.zeros((8, 10, 10, 1), np.uint8), np.full((8, 10, 10, 1), 200, np.uint8)])
    split = data.Split(np.repeat([0, 1], 8), images=images)
    mixing = LabelMixing(mixup, cutmix)
    x, y = Batches(split, (10, 10, 1), 2, 16, shuffle=True, mixing=mixing)[0]
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-6)
    assert ((y > 0) & (y < 1)).any()  # some labels are mixed
    # the share of class 1 in each label is the share of class-1 pixels (value 200) in each image
    np.testing.assert_allclose(x.reshape(16, -1).mean(axis=1) / 200, y[:, 1], atol=1e-4)
    assert not LabelMixing()


def test_randaugment_ops_do_what_their_names_say():
    from PIL import ImageEnhance, ImageOps

    ra = RandAugment(magnitude=10)
    x = _smooth(2, 16)
    pil = Image.fromarray(x[0].round().astype(np.uint8))
    rounded = np.asarray(pil, np.float32)[None]
    np.testing.assert_array_equal(ra.apply("invert", x, np.ones(2)), 255 - x)
    np.testing.assert_allclose(ra.apply("brightness", x, np.ones(2)), np.minimum(x * 1.9, 255), rtol=1e-5)
    np.testing.assert_array_equal(ra.apply("posterize", rounded, np.ones(1))[0], np.asarray(ImageOps.posterize(pil, 4)))
    np.testing.assert_array_equal(ra.apply("equalize", rounded, np.ones(1))[0], np.asarray(ImageOps.equalize(pil)))
    np.testing.assert_array_equal(ra.apply("solarize", rounded, np.ones(1))[0],
                                  np.asarray(ImageOps.solarize(pil, 256)))  # threshold 256: nothing changes
    m9 = RandAugment(magnitude=9)
    np.testing.assert_array_equal(m9.apply("solarize", rounded, np.ones(1))[0], np.asarray(ImageOps.solarize(pil, 230)))
    for op, enhancer in (("color", ImageEnhance.Color), ("contrast", ImageEnhance.Contrast),
                         ("brightness", ImageEnhance.Brightness)):
        ours = m9.apply(op, rounded, np.ones(1))[0]
        assert np.abs(ours - np.asarray(enhancer(pil).enhance(1.72), np.float32)).max() <= 1.5, op
    sheared = m9.apply("shear_x", rounded, np.ones(1))[0]  # about the top-left corner, as PIL's affine
    expected = np.asarray(pil.transform(pil.size, Image.Transform.AFFINE, (1, 0.27, 0, 0, 1, 0),
                                        resample=Image.Resampling.BILINEAR), np.float32)
    assert np.abs(sheared - expected)[:, :8].mean() < 4.0  # about the centre: 38
    sharp = ra.apply("sharpness", rounded, np.ones(1))[0]
    expected = np.asarray(ImageEnhance.Sharpness(pil).enhance(1.9), np.float32)  # 1.8 + 0.1 at magnitude 10
    assert np.abs(sharp - expected).max() <= 1.5  # PIL rounds its smoothed image (x0.9) and its result
    stretched = ra.apply("auto_contrast", x, np.ones(2))
    np.testing.assert_allclose(stretched.min(axis=(1, 2)), 0, atol=1e-3)
    np.testing.assert_allclose(stretched.max(axis=(1, 2)), 255, atol=1e-3)
    wide = _smooth(2, 20)
    shifted = ra.apply("translate_x", wide, np.ones(2))  # 45% of the width, 9 px: the content moves left
    np.testing.assert_allclose(shifted[:, :, :11], wide[:, :, 9:], atol=1e-3)
    np.testing.assert_array_equal(shifted[:, :, 11:], 0)


def test_randaugment_gives_each_image_its_own_ops_and_replays_from_the_generator():
    x = np.repeat(_smooth(1, 16), 64, axis=0)
    ra = RandAugment()
    out = ra(x, np.random.default_rng(3))
    np.testing.assert_array_equal(ra(x, np.random.default_rng(3)), out)
    unchanged = np.all(np.isclose(out, x), axis=(1, 2, 3))
    assert 0.1 < unchanged.mean() < 0.5  # neither op applied: (1 - 0.5)^2 = 1/4 of the images
    assert len({out[i].tobytes() for i in range(64)}) > 20
    strong = augmentation("strong")
    assert strong.randaugment is not None and augmentation("basic").randaugment is None
