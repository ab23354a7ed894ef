"""Studies: study files checked before anything trains, the plan, resume after a real signal,
workers, the submitit engine's local mode, the summary's statistics, refusing different test sets."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from helpers import study_command, write_study_file

from experiments import compare as compare_cli
from experiments.cli import main
from kerascnn import stats
from kerascnn import study as studies
from kerascnn.config import RunConfig
from kerascnn.errors import KerascnnError

ROOT = Path(__file__).resolve().parents[1]
TINY = """
dataset = "digits"
model = "cnn"
split = "20,10,30"
verbose = 2
"""


@pytest.mark.parametrize("text, message", [
    (TINY + "lrr = 0.1\n[[config]]\nname = 'a'\n", "s.toml line 6: unknown setting 'lrr'"),
    (TINY + "[[config]]\nname = 'a'\nseed = 3\n", "line 8: unknown setting 'seed'; use seeds = [...]"),
    (TINY + "[[config]]\nname = 'a'\ngrid.lr = 0.1\n", "line 8: grid.lr must be a non-empty list"),
    (TINY + "[[config]]\nname = 'a'\n[[config]]\nname = 'a'\n", "config name 'a' is used twice"),
    (TINY + "[[config]]\nname = 'a'\nweights = '@b'\n", "line 8: weights '@b' names no other config"),
    (TINY + "seeds = [0, 1]\nshare = ['p']\n[[config]]\nname = 'p'\n[[config]]\nname = 'a'\nweights = '@p'\n",
     "line 6: 'p' is shared, so it runs once: give it seeds = [N] and no grid (it has 2 runs)"),
    (TINY + "seeds = [0, 1]\n[[config]]\nname = 'p'\nseeds = [0]\n[[config]]\nname = 'a'\nweights = '@p'\n",
     "line 9: 'p' takes its seeds from the configs that fine-tune from it (replicate k fine-tunes from p seed k); "
     "remove its seeds, or add share = [\"p\"]"),
    (TINY + "share = ['a']\n[[config]]\nname = 'a'\n", "line 6: share names 'a', which no config fine-tunes from"),
    (TINY + "share = 'p'\n[[config]]\nname = 'p'\n", "line 6: share must list config names"),
    (TINY + "[[config]]\nname = 'p'\ngrid.lr = [0.1, 0.01]\n[[config]]\nname = 'a'\nweights = '@p'\n",
     "line 8: 'p' has grid.lr, but a config others fine-tune from may repeat only over seeds, fold or split_seed"),
    (TINY + "[[config]]\nname = 'p'\ngrid.fold = [0, 1]\n[[config]]\nname = 'a'\nweights = '@p'\n",
     "run a-seed0 has no run of p to fine-tune from with its seed and fold=0"),
    (TINY + "[[config]]\nname = 'a'\nmodel = 'resnet9'\n", "line 8: run a-seed0: unknown model 'resnet9'"),
    (TINY + "[[config]]\nname = 'a'\nunfreeze = 'block9'\n", "line 8: run a-seed0: --unfreeze: cnn has no stage"),
    (TINY + "[[config]]\nname = 'a'\nweights = 'gone.pth'\n", "line 8: run a-seed0: --weights 'gone.pth': no such"),
    (TINY + "[[config]]\nname = 'a'\ngrid.unfreeze = ['layer9']\n", "run a-unfreeze-layer9-seed0"),
    (TINY + "[[config]]\nname = 'a'\nlr = -1.0\n", "line 8: run a-seed0: --lr must be > 0"),
    (TINY + "[[config]]\nname = 'a'\nepochs = 'many'\n", "line 8: run a-seed0: --epochs must be an integer"),
    (TINY + "seeds = [0, 0]\n[[config]]\nname = 'a'\n", "two runs of 'a' would share the folder a-seed0"),
    (TINY + "[[config]]\nname = 'p'\n[[config]]\nname = 'q'\nweights = '@p'\n[[config]]\nname = 'a'\n"
     "weights = '@q'\n", "'q' fine-tunes from another config itself"),
    (TINY + "[[config]]\nname = 'a'\ngrid = 3\n", "line 8: grid must be a table of lists"),
    (TINY + "[[config]\n", "s.toml: "),
    (TINY, "no [[config]] tables"),
])
def test_bad_study_files_are_one_line_errors_before_anything_is_created(text, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert study_command([str(write_study_file(tmp_path, text)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_the_plan_expands_grids_and_seeds_and_runs_dependencies_first(tmp_path, capsys):
    text = TINY + """seeds = [0, 1]
[[config]]
name = "tune"
weights = "@pre"
grid.lr = [0.01, 0.001]
grid.pool = ["max", "avg"]
[[config]]
name = "pre"
split = "default"
"""
    plan = studies.load_study(str(write_study_file(tmp_path, text)))
    assert [r.name for r in plan.runs[:2]] == ["pre-seed0", "pre-seed1"] and plan.runs[0].dependency
    assert len(plan.runs) == 2 + 2 * 2 * 2
    assert "split" not in plan.runs[0].options and plan.runs[2].options["split"] == "20,10,30"
    run = plan.runs[2]
    assert run.options["split_seed"] == 0 and {r.seed for r in plan.runs[2:]} == {0, 1}
    assert run.configuration == "tune [lr=0.01, pool=max]" and run.group == "tune [pool=max]"
    assert all(r.upstream_run == f"pre-seed{r.seed}" for r in plan.runs[2:])  # whole-pipeline replicates
    assert study_command([str(tmp_path / "s.toml"), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    assert "pre-seed1 (dependency): new" in capsys.readouterr().out and not (tmp_path / "o").exists()
    assert [r.name for r in studies.select(plan, "pre")] == ["pre-seed0", "pre-seed1"]
    assert len(studies.select(plan, "tune")) == 10  # with what it fine-tunes from
    assert study_command([str(tmp_path / "s.toml"), "--dry-run", "--only", "nope"]) == 2
    assert "--only nope: no config of that name; configs: pre, tune" in capsys.readouterr().err
    assert study_command(["transfer_digits", "--dry-run", "--out", str(tmp_path / "o")]) == 0  # the bundled file parses
    assert study_command(["no_such_study"]) == 2
    assert "bundled study: " in capsys.readouterr().err


PIPELINE = TINY + """epochs = 1
seeds = [0, 1, 2]
[[config]]
name = "pre"
[[config]]
name = "tune"
weights = "@pre"
lr = 0.0003
"""


def test_each_replicate_fine_tunes_from_its_own_dependency_run_unless_it_is_shared(tmp_path):
    plan = studies.load_study(str(write_study_file(tmp_path, PIPELINE)))
    pre, tune = [r for r in plan.runs if r.dependency], [r for r in plan.runs if not r.dependency]
    assert [r.seed for r in pre] == [0, 1, 2] and [r.upstream_run for r in tune] == ["pre-seed0", "pre-seed1",
                                                                                     "pre-seed2"]
    assert studies.variance_sources(tune) == {"covers": ["training seed", "dependency pre"], "conditional_on": []}
    shared_text = PIPELINE.replace("epochs = 1\n", "epochs = 1\nshare = ['pre']\n").replace(
        'name = "pre"', 'name = "pre"\nseeds = [0]')
    shared = studies.load_study(str(write_study_file(tmp_path, shared_text)))
    tune = [r for r in shared.runs if not r.dependency]
    assert [r.name for r in shared.runs if r.dependency] == ["pre-seed0"]
    assert {r.upstream_run for r in tune} == {"pre-seed0"}
    variance = studies.variance_sources(tune)
    assert variance == {"covers": ["training seed"], "conditional_on": ["pre-seed0"]}
    assert studies.covers_text(variance) == "training seed; conditional on one pretraining run, pre-seed0"
    # folds pair like seeds when the dependency repeats over them too
    folds = studies.load_study(str(write_study_file(tmp_path, TINY + "seeds = [0, 1]\ngrid.fold = [0, 1]\n"
                                         "[[config]]\nname = 'p'\n[[config]]\nname = 'a'\nweights = '@p'\n")),
                               check=False)
    tuned = [r for r in folds.runs if not r.dependency]
    assert len(folds.runs) == 8 and all(r.upstream_run == f"p-fold-{r.setting['fold']}-seed{r.seed}" for r in tuned)
    assert studies.variance_sources(tuned)["covers"] == ["training seed", "fold", "dependency p"]


@pytest.mark.slow
def test_a_study_replicates_its_pretraining_and_says_what_its_intervals_cover(tmp_path):
    out = tmp_path / "out"
    assert study_command([str(write_study_file(tmp_path, PIPELINE)), "--out", str(out)]) == 0
    summary = json.loads((out / "study.json").read_text())
    assert sorted(r["run"] for r in summary["plan"] if r["dependency"]) == ["pre-seed0", "pre-seed1", "pre-seed2"]
    (tune,) = summary["configurations"]
    assert tune["runs_finished"] == 3 and tune["variance"]["covers"] == ["training seed", "dependency pre"]
    for seed in range(3):  # each fine-tuning started from its own pretraining run's model
        weights = json.loads((out / f"tune-seed{seed}" / "config.json").read_text())["weights"]
        assert Path(weights) == out / f"pre-seed{seed}" / "model.keras"
    assert "| training seed, dependency pre |" in (out / "study.md").read_text()

    shared_out = tmp_path / "shared"
    text = PIPELINE.replace("epochs = 1\n", "epochs = 1\nshare = ['pre']\n").replace('name = "pre"',
                                                                                     'name = "pre"\nseeds = [0]')
    assert study_command([str(write_study_file(tmp_path, text, "shared.toml")), "--out", str(shared_out)]) == 0
    assert sorted(p.name for p in shared_out.glob("pre-seed*")) == ["pre-seed0"]
    report = (shared_out / "study.md").read_text()
    assert "| training seed; conditional on one pretraining run, pre-seed0 |" in report
    assert json.loads((shared_out / "study.json").read_text())["configurations"][0]["variance"] == {
        "covers": ["training seed"], "conditional_on": ["pre-seed0"]}


def history_epochs(run_dir):
    return [int(row["epoch"]) for row in csv.DictReader((run_dir / "history.csv").open())]


@pytest.mark.slow
def test_an_interrupted_study_resumes_where_it_stopped(tmp_path):
    """A real SIGTERM while the second run trains; the same command again skips the first run,
    resumes the second from its last finished epoch and runs the third."""
    path = write_study_file(tmp_path, TINY + "epochs = 6\npatience = 0\n[[config]]\nname = 'a'\n[[config]]\n"
                            "name = 'b'\nlr = 0.001\n[[config]]\nname = 'c'\ndropout = 0.5\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "experiments.study", str(path), "--out", str(out)]
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = out / "b-seed0" / "checkpoint" / "state.json"
    deadline = time.monotonic() + 300
    while not (state.is_file() and json.loads(state.read_text())["epoch"] >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    stopped_at = json.loads(state.read_text())["epoch"]
    assert stopped_at < 6 and json.loads((out / "b-seed0" / "status.json").read_text())["status"] == "interrupted"
    partial = (out / "study.md").read_text()
    assert "1 of 3 runs finished" in partial and "| a |" in partial
    first_model = (out / "a-seed0" / "model.keras").stat().st_mtime_ns

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "a-seed0: finished already; skipped" in again.stderr
    assert f"resuming from epoch {stopped_at + 1}" in again.stderr or "b-seed0: resuming" in again.stderr
    assert (out / "a-seed0" / "model.keras").stat().st_mtime_ns == first_model
    for run in ("a-seed0", "b-seed0", "c-seed0"):
        assert history_epochs(out / run) == [1, 2, 3, 4, 5, 6]
    summary = json.loads((out / "study.json").read_text())
    assert [c["configuration"] for c in summary["configurations"]] == ["a", "b", "c"]
    assert summary["runs_finished"] == 3 and "3 of 3 runs finished" in (out / "study.md").read_text()
    assert [sorted(runs) for runs in summary["precisions"].values()] == [["a-seed0", "b-seed0", "c-seed0"]]
    assert (out / "comparison.png").stat().st_size > 10_000


def run_intervals(out):
    intervals = []
    for run in out.iterdir():
        if (run / "status.json").is_file():
            start = json.loads((run / "config.json").read_text())["environment"]["started"]
            end = json.loads((run / "status.json").read_text())["time"]
            intervals.append(tuple(datetime.strptime(t, "%Y-%m-%dT%H:%M:%S%z").timestamp() for t in (start, end)))
    return intervals


FOUR_RUNS = TINY + "epochs = 3\nseeds = [0, 1]\n[[config]]\nname = 'a'\n[[config]]\nname = 'b'\nlr = 0.001\n"


def study_process(*argv):
    """The study command in its own process, as a user runs it (worker processes and submitit's
    jobs stay out of the test process)."""
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")}
    done = subprocess.run([sys.executable, "-m", "experiments.study", *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_two_workers_run_a_four_run_study_two_at_a_time(tmp_path):
    out = tmp_path / "out"
    study_process(write_study_file(tmp_path, FOUR_RUNS), "--out", out, "--workers", "2")
    summary = json.loads((out / "study.json").read_text())
    assert summary["runs_finished"] == 4 and not summary["failed"]
    intervals = run_intervals(out)
    assert len(intervals) == 4
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])  # at a tie, ends first
    running = np.cumsum([step for _, step in events])
    assert running.max() == 2  # two runs at a time, never three


@pytest.mark.slow
def test_the_submitit_engine_runs_the_same_study_in_its_local_mode(tmp_path):
    pytest.importorskip("submitit", reason="the slurm extra (submitit) is not installed")
    out = tmp_path / "out"
    study_process(write_study_file(tmp_path, FOUR_RUNS), "--out", out, "--engine", "submitit-local")
    summary = json.loads((out / "study.json").read_text())
    assert summary["runs_finished"] == 4 and (out / "submitit").is_dir()
    assert all(history_epochs(out / r["run"]) == [1, 2, 3] for r in summary["plan"])


def test_another_study_in_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.toml").write_text("name = 'other'\n")
    assert study_command([str(write_study_file(tmp_path, TINY + "[[config]]\nname = 'a'\n")), "--out", str(out)]) == 2
    assert "holds another version of the study" in capsys.readouterr().err


def test_a_study_whose_runs_trained_in_different_precisions_says_so():
    assert studies.precision_note({"float32": ["a-s0", "b-s0"]}) is None
    note = studies.precision_note({"mixed_bfloat16": ["b-s1"], "float32": ["a-s0", "b-s0"]})
    assert note.startswith("**Warning**") and "float32: a-s0, b-s0; mixed_bfloat16: b-s1" in note


def test_holm_adjustment():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5]) == [0.5] and stats.holm([]) == []


def test_t_interval_and_paired_tests(tmp_path):
    from scipy import stats as reference

    low, high = stats.t_interval([0.90, 0.92, 0.94])
    assert (low + high) / 2 == pytest.approx(0.92) and high - low == pytest.approx(
        2 * reference.t.ppf(0.975, 2) * 0.02 / np.sqrt(3))
    row = lambda run, acc, fp="x": {"run": run, "accuracy": acc, "test_set": {"fingerprint": fp}}  # noqa: E731
    a = {(0,): row("a0", 0.90), (1,): row("a1", 0.91), (2,): row("a2", 0.92)}
    b = {(0,): row("b0", 0.80), (1,): row("b1", 0.815), (2,): row("b2", 0.818)}
    paired = studies.paired_test(a, b, tmp_path)
    assert paired["p"] == pytest.approx(reference.ttest_rel([0.90, 0.91, 0.92], [0.80, 0.815, 0.818]).pvalue)
    assert paired["difference"] == pytest.approx(np.mean([0.1, 0.095, 0.102]))
    assert studies.paired_test(a, {(0,): row("c", 0.5, fp="other")}, tmp_path) is None  # another test set
    shifted = {k: row(r["run"], r["accuracy"] - 0.05) for k, r in a.items()}
    assert studies.paired_test(a, shifted, tmp_path)["p"] is None  # t undefined: not "real" by default
    labels = np.arange(100) % 10
    for name, wrong in (("m", 5), ("n", 20)):  # m is right wherever n is, and on 15 more images
        predicted = labels.copy()
        predicted[:wrong] = (predicted[:wrong] + 1) % 10
        (tmp_path / name).mkdir()
        np.savez_compressed(tmp_path / name / "test_predictions.npz", labels=labels, predicted=predicted,
                            index=np.arange(100))
    mcnemar = studies.paired_test({(0,): row("m", 0.95)}, {(0,): row("n", 0.80)}, tmp_path)
    assert "McNemar" in mcnemar["test"] and mcnemar["p"] == pytest.approx(reference.binomtest(15, 15, 0.5).pvalue)


@pytest.mark.slow
def test_compare_refuses_runs_tested_on_different_test_sets(tmp_path, capsys):
    import kerascnn

    runs = [kerascnn.run(kerascnn.RunConfig("digits", "cnn", epochs=1, split="20,10,30", verbose=0, seed=seed,
                                            split_seed=split_seed, out=str(tmp_path / f"r{seed}{split_seed}")))
            for seed, split_seed in ((0, 0), (1, 0), (0, 1))]
    assert main(compare_cli.body, compare_cli.parser(), [str(runs[0]), str(runs[1])]) == 0
    capsys.readouterr()
    assert main(compare_cli.body, compare_cli.parser(), [str(runs[0]), str(runs[2])]) == 2
    err = capsys.readouterr().err
    assert "different test sets (split_seed 0 vs 1)" in err and err.count("\n") == 1
    from kerascnn.reports import check_same_test_set, summarize_run

    with pytest.raises(KerascnnError, match="different test sets"):
        check_same_test_set([summarize_run(runs[1]), summarize_run(runs[2])])


@pytest.mark.parametrize("name", sorted(p.stem for p in studies.BUNDLED.glob("*.toml")))
def test_bundled_studies_parse(name):
    plan = studies.load_study(name, check=False)
    assert plan.runs and plan.name == name
    for run in plan.runs:
        RunConfig(**{**run.options, "weights": "none" if run.upstream else run.options.get("weights")}
                          ).validate()
    if name == "deep_weeds":
        assert {r.setting["fold"] for r in plan.runs} == {0, 1, 2, 3, 4}
        assert len({r.configuration for r in plan.runs}) == 3  # folds repeat a configuration
