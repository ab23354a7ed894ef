"""Messy and hostile data: FIFOs and other non-files among the rows, rows listed twice, one file under two
labels, labels that differ only in case, a CSV saved with a byte-order mark, the same image in train and
test, class names that would break a Markdown table; run state after ``kill -9`` and damaged checkpoints."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import own_lines, write_folder

import kerascnn
from kerascnn import checkpoint, data, rundir
from kerascnn.errors import KerascnnError
from kerascnn.reports import markdown_text

ROOT = Path(__file__).resolve().parent.parent


def csv_of(folder: Path, rows: list[tuple[str, str, str]], name: str = "data.csv", bom: bool = False) -> Path:
    """A CSV ``path,label,split`` (split left out when every row's is empty) in ``folder``."""
    with_split = any(split for _, _, split in rows)
    header = "path,label,split" if with_split else "path,label"
    lines = [header] + [",".join((p, label, split) if with_split else (p, label)) for p, label, split in rows]
    path = folder / name
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def images(tmp_path) -> list[tuple[str, str]]:
    """(relative path, class) of 8 distinct images of each of 3 colour classes, under ``tmp_path``."""
    write_folder(tmp_path / "img", per_class=8, size=12)
    return [(str(p.relative_to(tmp_path)), p.parent.name) for p in sorted((tmp_path / "img").rglob("*.png"))]


def test_a_fifo_a_folder_and_a_device_among_the_rows_are_skipped_not_waited_for(tmp_path, images):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "folder.png").mkdir()
    rows = [(p, c, "") for p, c in images] + [("pipe.png", "red", ""), ("folder.png", "red", ""),
                                               ("/dev/zero", "red", "")]
    path = csv_of(tmp_path, rows)
    # in a child process, so that a hang fails the test instead of stopping the suite
    code = f"from kerascnn import data; d = data.load('csv:{path}', image_size=12); print(sorted(d.skipped_files))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in ("pipe.png", "folder.png", "/dev/zero"))


def test_rows_listed_again_are_used_once_and_no_image_is_in_two_splits(tmp_path, images):
    path = csv_of(tmp_path, [(p, c, "") for p, c in images] * 3)
    dataset = data.load(f"csv:{path}", image_size=12, split="4,2,2")
    paths = [set(getattr(dataset, s).paths) for s in ("train", "val", "test")]
    assert sum(map(len, paths)) == len(images) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])


def test_test_images_listed_in_train_too_are_removed_from_train_and_counted(tmp_path, images):
    train = [(p, c, "train") for p, c in images[::2]]
    test = [(p, c, "test") for p, c in images[1::2]]
    copies = tmp_path / "copies"
    copies.mkdir()
    for p, _c in images[1:8:2]:  # byte-identical copies of four test images under other names, in train
        shutil.copy(tmp_path / p, copies / Path(p).name)
    leaked = [(f"copies/{Path(p).name}", c, "train") for p, c in images[1:8:2]] + [test[5][:2] + ("train",)]
    dataset = data.load(f"csv:{csv_of(tmp_path, train + leaked + test)}", image_size=12)
    assert dataset.leakage["duplicates_across_splits"] == {"train in test": 5}  # before validation is carved
    assert not {p for p in dataset.train.paths if "copies" in p} and len(dataset.test) == len(test)
    assert len(dataset.train) + len(dataset.val) == len(train) and dataset.leakage["examples"]
    assert any("5 exact duplicate image(s) removed" in note for note in dataset.notes)


def test_byte_identical_images_in_one_split_are_kept_once(tmp_path, images):
    for p, _ in images[:3]:
        shutil.copy(tmp_path / p, tmp_path / f"again-{Path(p).name}")
    rows = [(p, c, "") for p, c in images] + [(f"again-{Path(p).name}", c, "") for p, c in images[:3]]
    dataset = data.load(f"csv:{csv_of(tmp_path, rows)}", image_size=12, split="4,2,2")
    assert dataset.leakage["removed"] == 3 and len(dataset.train) + len(dataset.val) + len(dataset.test) == 24


def test_one_file_under_two_labels_is_refused_naming_it(tmp_path, images):
    (p, c), other = images[0], "green" if images[0][1] != "green" else "red"
    with pytest.raises(KerascnnError, match=rf"{Path(p).name} is listed under two labels, '{c}' and '{other}'"):
        data.load(f"csv:{csv_of(tmp_path, [(p, c, '') for p, c in images] + [(p, other, '')])}", image_size=12)


def test_one_image_under_two_labels_is_used_under_neither(tmp_path, images, caplog):
    (p, c), (_, d) = images[0], images[-1]
    shutil.copy(tmp_path / p, tmp_path / "copy.png")
    dataset = data.load(f"csv:{csv_of(tmp_path, [(p, c, '') for p, c in images] + [('copy.png', d, '')])}",
                        image_size=12, split="4,2,2")
    used = [Path(x).name for s in ("train", "val", "test") for x in getattr(dataset, s).paths]
    assert "copy.png" not in used and Path(p).name not in used and len(used) == len(images) - 1
    assert [e["label"] for e in dataset.leakage["conflicting_labels"][0]] == [c, d]
    assert "1 image(s) carry two labels and are left out" in caplog.text


def test_labels_that_differ_only_in_case_or_spaces_are_refused(tmp_path, images):
    rows = [(p, c, "") for p, c in images[:-1]] + [(images[-1][0], f" {images[-1][1].upper()} ", "")]
    with pytest.raises(KerascnnError, match="differ only in case or spaces"):
        data.load(f"csv:{csv_of(tmp_path, rows)}", image_size=12)


def test_a_csv_with_a_byte_order_mark_loads(tmp_path, images):
    dataset = data.load(f"csv:{csv_of(tmp_path, [(p, c, '') for p, c in images], bom=True)}", image_size=12)
    assert dataset.class_names == sorted({c for _, c in images})


def test_names_from_the_data_cannot_break_markdown():
    assert markdown_text("a|b\nc") == "a\\|b c"
    assert markdown_text("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert markdown_text("[click](javascript:alert(1))") == "\\[click\\](javascript:alert(1))"
    assert markdown_text("`code` *b*") == "\\`code\\` \\*b\\*"


def test_a_running_status_whose_process_is_gone_reads_interrupted(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    rundir.mark(tmp_path, "running", pid=gone.pid)
    assert rundir.read_status(tmp_path) == "interrupted"
    rundir.mark(tmp_path, "running", pid=os.getpid())
    assert rundir.read_status(tmp_path) == "running"


def test_a_damaged_checkpoint_is_named_as_such(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text('{"epoch": 3, "trunc')
    with pytest.raises(KerascnnError, match="state.json cannot be read .* the checkpoint is damaged"):
        checkpoint.load_state(tmp_path)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_an_empty_or_truncated_optimizer_state_is_one_line(tmp_path, content):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "optimizer-1.npz").write_bytes(content)
    with pytest.raises(KerascnnError, match="optimizer state does not load"):
        checkpoint.restore_optimizer(tmp_path, model, 1)


@pytest.mark.slow
def test_a_run_on_a_csv_with_a_fifo_and_leaked_test_images_reports_them_and_stops_on_sigterm(tmp_path, images):
    os.mkfifo(tmp_path / "pipe.png")
    hostile = "x|y <b>"  # a class name that would break the report's tables
    rows = [(p, hostile if c == "red" else c, "train") for p, c in images[::2]]
    test = [(p, hostile if c == "red" else c, "test") for p, c in images[1::2]]
    rows += test + [(p, c, "train") for p, c, _ in test[:3]] + [("pipe.png", "green", "train")]
    path = csv_of(tmp_path, rows)
    out = tmp_path / "run"
    kerascnn.run(kerascnn.RunConfig(f"csv:{path}", "cnn", epochs=1, image_size=12, out=str(out), verbose=0))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["leakage"]["duplicates_across_splits"] == {"train in test": 3}
    assert any(name.endswith("pipe.png") for name in metrics["skipped_file_names"])
    per_class, confusion = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| x")]
    assert per_class.count(" | ") == 6 and confusion.count(" | ") == 3  # the rows keep their 7 and 4 cells
    # the same data, interrupted: SIGTERM ends it with 143 within seconds
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")}
    process = subprocess.Popen([sys.executable, "-m", "experiments.run", f"csv:{path}", "cnn", "--epochs", "500",
                                "--image-size", "12", "--patience", "0", "--out", str(tmp_path / "stopped")],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (tmp_path / "stopped" / "checkpoint" / "state.json").is_file():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=10)
    assert process.returncode == 143 and "Traceback" not in err, err
    assert np.isfinite(metrics["accuracy"])


@pytest.mark.parametrize("error", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_an_output_file_in_a_place_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch, error):
    def fail(*args, **kwargs):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(rundir.tempfile, "NamedTemporaryFile", fail)
    with pytest.raises(KerascnnError, match=rf"--csv '.*out.csv': cannot write in .* \({os.strerror(error)}\)"):
        rundir.check_free(tmp_path / "out.csv", "--csv", folder=False)


@pytest.mark.slow  # a child process that imports Keras
def test_predict_refuses_a_model_file_with_code_in_one_line(tmp_path, capsys):
    import keras

    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(tmp_path / "lambda.keras")
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    done = subprocess.run([sys.executable, "-m", "experiments.predict", str(tmp_path / "lambda.keras"),
                           str(tmp_path / "a.png")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "cannot be loaded" in done.stderr and len(own_lines(done.stderr)) == 1, done.stderr


def test_a_cache_folder_that_is_a_file_is_one_line(tmp_path, monkeypatch, images):
    from kerascnn.data.cache import decode_splits

    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("KERASCNN_CACHE", str(tmp_path / "cache"))
    dataset = data.load(f"csv:{csv_of(tmp_path, [(p, c, '') for p, c in images])}", image_size=12)
    with pytest.raises(KerascnnError, match="the decoded-image cache cannot use .*KERASCNN_CACHE"):
        decode_splits({"train": dataset.train}, dataset.image_shape, "disk")


@pytest.mark.slow  # a child process that imports Keras
def test_a_study_of_a_dataset_that_is_not_here_is_one_line_before_anything_is_created(tmp_path):
    done = subprocess.run([sys.executable, "-m", "experiments.study", "animals10", "--out", str(tmp_path / "s")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and "animals10 not found" in done.stderr, done.stderr
    assert len(own_lines(done.stderr)) == 1 and not (tmp_path / "s").exists(), done.stderr


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS])
def test_a_write_that_fails_is_one_line_and_leaves_neither_a_partial_file_nor_a_changed_target(tmp_path, error):
    target = tmp_path / "best.weights.h5"
    target.write_text("the last good file")

    def write(partial):
        partial.write_text("half")
        raise OSError(error, os.strerror(error))

    with pytest.raises(KerascnnError, match=rf"cannot write .*best.weights.h5 \({os.strerror(error)}\)"):
        rundir.write_whole(target, write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.weights.h5"]
    assert target.read_text() == "the last good file"


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB filesystem (tmpfs), where the test may mount one."""
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow
def test_a_run_whose_disk_fills_up_ends_in_one_line_and_a_failed_status(small_disk):
    out = small_disk / "run"
    done = subprocess.run([sys.executable, "-m", "experiments.run", "digits", "cnn", "--epochs", "3", "--out", str(out),
                           "--verbose", "0"], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")})
    assert done.returncode == 2, done.stderr  # not 139: HDF5 crashed at exit after a write ran out of space
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write") and "Traceback" not in done.stderr, done.stderr
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == last.removeprefix("error: ")
    assert not [p for p in out.rglob("*") if p.name.startswith(".partial-")]
