import numpy as np
import pytest
from helpers import write_folder, write_idx_gz
from PIL import Image

from kerascnn import data
from kerascnn.errors import KerascnnError


def test_flat_folder_is_split_per_class_with_the_default_fractions(colour_folder):
    ds = data.load(f"folder:{colour_folder}", image_size=16)
    assert ds.class_names == ["blue", "green", "red"]
    assert ds.image_shape == (16, 16, 3) and ds.streamed
    assert [len(ds.train), len(ds.val), len(ds.test)] == [18, 3, 3]
    paths = [set(s.paths) for s in (ds.train, ds.val, ds.test)]
    assert not paths[0] & paths[1] and not paths[0] & paths[2] and not paths[1] & paths[2]
    assert any("no official split" in n for n in ds.notes)
    x = ds.test.pixels(np.arange(3), ds.image_shape)
    assert x.shape == (3, 16, 16, 3) and x.dtype == np.uint8


def test_folder_with_split_folders_uses_them_and_carves_validation(tmp_path):
    root = write_folder(tmp_path / "s", per_class=10, splits=("train", "test"))
    ds = data.load(f"folder:{root}", val_split=0.2, image_size=16)
    assert ds.train.counts(3) == [8, 8, 8] and ds.val.counts(3) == [2, 2, 2] and ds.test.counts(3) == [10, 10, 10]
    assert all("/test/" in p for p in ds.test.paths)


def test_explicit_split_counts(tmp_path):
    root = write_folder(tmp_path / "c", per_class=12)
    ds = data.load(f"folder:{root}", split="6,3,3", image_size=8)
    assert ds.train.counts(3) == [6, 6, 6] and ds.val.counts(3) == [3, 3, 3] and ds.test.counts(3) == [3, 3, 3]


def test_unreadable_files_are_skipped_and_counted(colour_folder):
    (colour_folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    ds = data.load(f"folder:{colour_folder}", image_size=16)
    assert len(ds.skipped_files) == 1
    assert len(ds.train) + len(ds.val) + len(ds.test) == 24


def test_an_empty_class_folder_is_left_out_with_a_warning_and_one_class_is_an_error(colour_folder, caplog):
    (colour_folder / "purple").mkdir()
    ds = data.load(f"folder:{colour_folder}", image_size=16)
    assert ds.class_names == ["blue", "green", "red"] and "holds no image files" in caplog.text
    for name in ("blue", "green"):
        for f in (colour_folder / name).iterdir():
            f.unlink()
    with pytest.raises(KerascnnError, match="training images of 1 class"):
        data.load(f"folder:{colour_folder}", image_size=16)


def test_grey_folder_gets_one_channel(tmp_path):
    for offset, name in enumerate(("a", "b")):
        (tmp_path / "g" / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((10, 10), 50 * i + offset, np.uint8)).save(tmp_path / "g" / name / f"{i}.png")
    assert data.load(f"folder:{tmp_path / 'g'}", image_size=8).image_shape == (8, 8, 1)


def test_csv_with_split_column_and_relative_paths(colour_folder):
    rows = ["path,label,split"]
    for colour in ("red", "green", "blue"):
        for i in range(8):
            rows.append(f"{colour}/{colour}_{i}.png,{colour},{'train' if i < 5 else 'val' if i < 6 else 'test'}")
    (colour_folder / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = data.load(f"csv:{colour_folder / 'labels.csv'}", image_size=8)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [15, 3, 6]


def test_csv_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.png,a\n")
    with pytest.raises(KerascnnError, match="path,label"):
        data.load(f"csv:{bad}")
    with pytest.raises(KerascnnError, match="does not exist"):
        data.load(f"csv:{tmp_path / 'missing.csv'}")
    bad.write_text("path,label\n")
    with pytest.raises(KerascnnError, match="no image files found in .*bad.csv; expected rows path,label"):
        data.load(f"csv:{bad}")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(KerascnnError, match="fashion_mnist, digits, animals10, deep_weeds, fer2013, folder:PATH"):
        data.load("mnist_fashion")


def test_digits_are_real_and_offline():
    ds = data.load("digits", seed=3)
    assert ds.image_shape == (8, 8, 1) and ds.num_classes == 10
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    assert ds.train.images.max() == 255 and ds.train.images.dtype == np.uint8


def test_fashion_mnist_from_kerascnn_data(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "fashion-mnist"
    write_idx_gz(folder, rng.integers(0, 255, (100, 28, 28)), np.arange(100) % 10, "train")
    write_idx_gz(folder, rng.integers(0, 255, (20, 28, 28)), np.arange(20) % 10, "t10k")
    monkeypatch.setenv("KERASCNN_DATA", str(tmp_path))
    ds = data.load("fashion_mnist", val_split=0.1)
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert [len(ds.train), len(ds.val), len(ds.test)] == [90, 10, 20]
    assert ds.val.counts(10) == [1] * 10 and ds.image_shape == (28, 28, 1)


def test_missing_fashion_mnist_says_where_it_looked(tmp_path, monkeypatch):
    import keras

    from kerascnn.data import sources

    def offline():
        raise OSError("no network")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    monkeypatch.setattr(sources, "fashion_mnist_dirs", lambda data_dir: [tmp_path / "nowhere"])
    with pytest.raises(KerascnnError, match="nowhere.*apt-get install dataset-fashion-mnist"):
        data.load("fashion_mnist")
