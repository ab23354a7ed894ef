"""Fuzzing the command line and malformed datasets: every case exits 0 or 2 with at most one error
line and no traceback, changes nothing that existed before, and leaves no folder that does not say
what state it is in. Training is stubbed (it is not what is fuzzed): a case that passes every check
stops where the first epoch would start, as a failed run."""

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from helpers import write_folder
from PIL import Image

from experiments import run as run_cli
from experiments.cli import main
from kerascnn import training
from kerascnn.errors import KerascnnError
from kerascnn.rundir import read_status

CASES = 240
DATASETS = ("digits", "folder:{text_as_images}", "folder:{empty}", "folder:{one_class}", "folder:{empty_class}",
            "folder:{odd_modes}", "csv:{missing_files}", "csv:{header_only}", "csv:{bad_split}", "folder:{nowhere}",
            "nosuch", "tfds", "folder:")
MODELS = ("cnn", "cnn3", "cnn2bn", "resnet18", "nosuch", "")
OPTIONS = {
    "--epochs": ["0", "-1", "x", "1", "2.5"],
    "--batch-size": ["0", "-8", "16"],
    "--lr": ["0", "-1", "abc", "1e-3", "nan"],
    "--image-size": ["0", "4", "16", "-32", "x"],
    "--kernel-size": ["0", "3", "-1"],
    "--filters": ["8,16", "0", "a,b", "none", "-4"],
    "--dense": ["none", "0", "32"],
    "--dropout": ["1.5", "0.2", "-0.1"],
    "--workers": ["-3", "0", "2"],
    "--top-k": ["99", "0", "2"],
    "--unfreeze": ["layer9", "none", "all", "block1", "head,block9"],
    "--unfreeze-at": ["0", "1", "99"],
    "--weights": ["none", "{missing_weights}", "{not_weights}"],
    "--split": ["0.9,0.9,0.9", "1,2", "0.6,0.2,0.2", "a,b,c", "3,1,1"],
    "--fold": ["3", "0", "-1"],
    "--devices": ["0", "x", "all", "00", "2"],
    "--precision": ["float64", "float32"],
    "--optimizer": ["rmsprop", "sgd"],
    "--lr-schedule": ["step", "warp"],
    "--label-smoothing": ["1", "0.1", "-0.2"],
    "--val-split": ["1", "0.2", "-0.1"],
    "--rotate": ["400", "10"],
    "--translate": ["1.5", "0.1"],
    "--cache": ["gpu", "none", "disk"],
    "--mixup": ["-1", "0.2"],
    "--out": ["{existing_out}", "{file_out}", "{fresh_out}"],
    "--epoch": ["1"],
    "--nesterov": [None],
    "--finetune-lr": ["0.1", "-1"],
    "--bogus": ["1"],
    "--resume": ["{existing_out}", "{nowhere}", "{file_out}", "{interrupted_run}", "{corrupt_run}"],
    "--runs-dir": ["{file_out}", "runs_here"],
}


def make_datasets(root: Path) -> dict[str, str]:
    """Malformed and unusual datasets, plus the files the options may name."""
    paths = {}
    text = root / "text_as_images"
    for name in ("a", "b"):
        (text / name).mkdir(parents=True)
        for i in range(3):
            (text / name / f"{i}.jpg").write_text("not an image")
    paths["text_as_images"] = text
    (root / "empty").mkdir()
    paths["empty"] = root / "empty"
    one = write_folder(root / "one_class", per_class=4, size=12)
    for name in ("green", "blue"):
        for f in (one / name).iterdir():
            f.unlink()
        (one / name).rmdir()
    paths["one_class"] = one
    empty_class = write_folder(root / "empty_class", per_class=6, size=12)
    for f in (empty_class / "blue").iterdir():
        f.unlink()
    paths["empty_class"] = empty_class
    modes = root / "odd_modes"
    rng = np.random.default_rng(0)
    for name, mode in (("p", "P"), ("la", "LA"), ("i16", "I;16"), ("cmyk", "CMYK")):
        (modes / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)
            image = Image.fromarray(pixels).convert(mode if mode != "I;16" else "L")
            image = image.convert("I;16") if mode == "I;16" else image
            image.save(modes / name / f"{i}.{'jpg' if mode == 'CMYK' else 'png'}")
    paths["odd_modes"] = modes
    (root / "missing_files.csv").write_text("path,label\nno1.png,a\nno2.png,b\n")
    paths["missing_files"] = root / "missing_files.csv"
    (root / "header_only.csv").write_text("path,label\n")
    paths["header_only"] = root / "header_only.csv"
    split_csv = write_folder(root / "for_csv", per_class=3, size=12)
    rows = [f"{p},{p.parent.name},holdout" for p in sorted(split_csv.rglob("*.png"))]
    (root / "bad_split.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    paths["bad_split"] = root / "bad_split.csv"
    paths["nowhere"] = root / "no" / "such" / "folder"
    paths["missing_weights"] = root / "nope.weights.h5"
    (root / "not_weights.weights.h5").write_text("plain text")
    paths["not_weights"] = root / "not_weights.weights.h5"
    (root / "existing_out").mkdir()
    (root / "existing_out" / "keep.txt").write_text("earlier work")
    paths["existing_out"] = root / "existing_out"
    (root / "file_out").write_text("a file, not a folder")
    paths["file_out"] = root / "file_out"
    paths["fresh_out"] = root / "fresh_out"
    interrupted = root / "interrupted_run"  # stopped before its first epoch ended: no checkpoint
    interrupted.mkdir()
    (interrupted / "config.json").write_text(json.dumps({"dataset": "digits", "model": "cnn"}))
    (interrupted / "status.json").write_text(json.dumps({"status": "interrupted"}))
    paths["interrupted_run"] = interrupted
    corrupt = root / "corrupt_run"
    (corrupt / "checkpoint").mkdir(parents=True)
    (corrupt / "config.json").write_text("{not json")
    (corrupt / "checkpoint" / "state.json").write_text(json.dumps({"epoch": 2}))
    paths["corrupt_run"] = corrupt
    return {k: str(v) for k, v in paths.items()}


def argv_of(case: int) -> list[str]:
    rng = random.Random(case)
    argv = [rng.choice(DATASETS), rng.choice(MODELS)]
    for flag in rng.sample(sorted(OPTIONS), rng.choice([0, 0, 1, 2, 3, 4])):
        value = rng.choice(OPTIONS[flag])
        argv += [flag] if value is None else [flag, value]
    return [a for a in argv if a != ""]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    return root, make_datasets(root)


def stop_before_training(*args, **kwargs):
    raise KerascnnError("stopped by the fuzz test where training would start")


# each value alone on a run that is otherwise fine, and each dataset alone: these reach the deeper checks
SINGLE = [["digits", "cnn", flag, *([] if value is None else [value])] for flag in OPTIONS for value in OPTIONS[flag]]
SINGLE += [[dataset, model] for dataset in DATASETS for model in ("cnn", "resnet18")]
SINGLE += [["--resume", value] for value in OPTIONS["--resume"]]


def case_argv(case: int) -> list[str]:
    argv = SINGLE[case] if case < len(SINGLE) else argv_of(case)
    if "resnet18" in argv:
        argv = argv + ([] if "--image-size" in argv else ["--image-size", "32"])  # 224 pixels only makes it slow
        argv += [] if "--weights" in argv else ["--weights", "none"]  # no download attempts from tests
    return argv


FAST_CASES = 80  # random cases in the fast tier; the rest run with the slow tier


@pytest.mark.parametrize("case", [*range(len(SINGLE) + FAST_CASES),
                                  *(pytest.param(c, marks=pytest.mark.slow)
                                    for c in range(len(SINGLE) + FAST_CASES, len(SINGLE) + CASES))])
def test_the_command_line_never_crashes_or_loses_anything(case, world, tmp_path, monkeypatch, capsys):
    root, paths = world
    monkeypatch.setattr(training, "fit", stop_before_training)
    monkeypatch.chdir(tmp_path)  # default run folders (runs/...) land here
    argv = [a.format(**paths) for a in case_argv(case)]
    if not {"--out", "--resume", "--runs-dir"} & set(argv):
        argv += ["--out", str(tmp_path / "out")]
    before = snapshot(root)
    code = main(run_cli.body, run_cli.parser(), argv)
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, err)
    assert "Traceback" not in err, (argv, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0].rstrip()), (argv, err)
    after = snapshot(root)
    assert {k: v for k, v in after.items() if k in before} == before, argv  # nothing that existed changed
    new = {Path(k).parts[0] for k in after if k not in before}
    assert new <= {"fresh_out"}, argv
    made = [f for f in (tmp_path / "out", *(tmp_path / "runs_here").glob("*"), *(tmp_path / "runs").glob("*"))
            if f.exists()] + [Path(paths["fresh_out"])] * bool(new)
    if "stopped by the fuzz test" in errors[0]:  # passed every check: one folder, marked as the failed run
        assert len(made) == 1 and read_status(made[0]) == "failed", (argv, made)
    else:  # refused: nothing created
        assert made == [], (argv, made)
