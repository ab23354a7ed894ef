"""Strategy search: bad [search] tables are one-line errors before anything trains; trials are run
folders, pruned ones included; stopped trials are failed and retried once; two workers share one
journal file or one PostgreSQL database, one of them killed mid-trial."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from helpers import study_command, write_study_file  # noqa: E402

from kerascnn import rundir  # noqa: E402
from kerascnn.study import load_study  # noqa: E402
from kerascnn.study.search import retry_stopped_trials, trial_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = """name = "tiny"
dataset = "digits"
model = "cnn"
filters = [8, 16]
dense = [32]
epochs = 3
verbose = 0

[[config]]
name = "base"
lr = 1e-3
"""
SEARCH = """
[search]
trials = 3
pruner = "successive_halving"
sampler = "random"
space.lr = {low = 1e-4, high = 1e-2, log = true}
space.batch_size = [32, 64]
confirm = {top = 1, seeds = [0, 1]}
"""


@pytest.mark.parametrize("search, message", [
    ("[search]\ntrials = 2\nspace.colour = [1, 2]\n", "s.toml line 14: space.colour is not a run option"),
    ("[search]\ntrials = 2\nspace.lr = []\n", "line 14: space.lr is an empty choice list"),
    ("[search]\ntrials = 2\nspace.lr = {low = 0.1, high = 0.01}\n", "line 14: space.lr has low 0.1 > high 0.01"),
    ("[search]\ntrials = 2\npruner = 'median'\nspace.lr = [0.1]\n", "line 14: unknown pruner 'median'; pruners: "
                                                                     "hyperband, successive_halving, none"),
    ("[search]\ntrials = 2\nsampler = 'grid'\nspace.lr = {low = 0.001, high = 0.1}\n",
     "the grid sampler needs choice lists, and space.lr is a range"),
    ("[search]\nspace.lr = [0.1]\n", "give trials (how many) or budget (epochs over all trials)"),
    ("[search]\ntrials = 2\nspace.lr = {low = 0, high = 0.1, log = true}\n", "log-uniform, so low must be > 0"),
    ("[search]\ntrials = 2\nworkers = 3\nspace.lr = [0.1]\n", "line 14: unknown [search] key 'workers'"),
    ("[search]\ntrials = 2\nspace.lr = [0.1, -1.0]\n", "line 14: space.lr = -1.0: --lr must be > 0, got -1.0"),
    ("[search]\ntrials = 2\nspace.lr = [0.1]\nconfirm = {top = 0}\n", "confirm.top must be an integer >= 1"),
    ("[search]\ntrials = 2\nstorage = 'journal'\nspace.lr = [0.1]\n", "storage must be an Optuna storage URL"),
    ("[search]\ntrials = 2\nspace.lr = [0.1]\nconfirm = {top = 2, race = 1}\n",
     "confirm.race (the trials that start the confirmation) must be an integer >= confirm.top (2), got 1"),
    ("[search]\ntrials = 2\nspace.lr = [0.1]\nconfirm = {top = 1, race = 2, seeds = [0]}\n",
     "confirm.race races the trials over the confirmation seeds, so it needs two seeds or more"),
    ("[search]\ntrials = 2\nspace.lr = [0.1]\nconfirm = {top = 1, race = 2, seeds = 3}\n",
     "confirm.seeds must be a non-empty list of integers >= 0"),
    ("[search]\ntrials = 2\nmin_epochs = 0\nspace.lr = [0.1]\n", "line 14: min_epochs must be an integer >= 1"),
    ("[search]\ntrials = 2\npruner = 'none'\nmin_epochs = 1\nspace.lr = [0.1]\n",
     "line 15: min_epochs is the pruner's first epoch, and pruner = \"none\" prunes nothing"),
    ("[search]\ntrials = 2\nmin_epochs = 3\nspace.lr = [0.1]\n", "min_epochs must be below a trial's epochs (3)"),
])
def test_bad_search_files_are_one_line_errors_before_anything_is_created(search, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert study_command([str(write_study_file(tmp_path, TINY + search)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_the_bundled_searches_parse_and_a_dry_run_describes_them(tmp_path, capsys):
    assert study_command(["search_digits", "--dry-run", "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert "space: unfreeze in ['layer4', 'layer3,layer4', 'all']; lr in [0.003, 0.001, 0.0003]; " \
           "backbone_lr_scale in [1.0, 0.1] (18 settings)" in printed and "until 100 epochs" in printed
    assert not (tmp_path / "o").exists()
    grid = load_study("search_digits")
    from kerascnn.study.search import full_grid_study

    runs = full_grid_study(grid.search, grid).runs
    assert len([r for r in runs if r.config == "grid"]) == 18 * 3  # every setting, every confirmation seed
    assert {r.upstream_run for r in runs if r.config == "grid"} == {f"pretrain-seed{k}" for k in range(3)}
    assert load_study("search_animals10", check=False).search.space[1].log


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: its pid is gone
    return process.pid


def test_stopped_trials_are_failed_and_retried_once(tmp_path):
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "j.journal")))
    search = optuna.create_study(storage=storage, direction="maximize")
    killed = search.ask()
    killed.suggest_categorical("unfreeze", ["all", "layer4"])
    killed.set_user_attr("worker", {"host": socket.gethostname(), "pid": _dead_pid(), "trial": killed.number})
    alive = search.ask()
    alive.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
    elsewhere = search.ask()
    elsewhere.set_user_attr("worker", {"host": "another-node", "pid": 1})
    interrupted = search.ask()
    interrupted.set_user_attr("interrupted", True)
    search.tell(interrupted, state=TrialState.FAIL)
    failed = search.ask()
    search.tell(failed, state=TrialState.FAIL)  # a setting that fails: not retried

    assert sorted(retry_stopped_trials(search)) == [killed.number, interrupted.number]
    trials = search.get_trials()
    assert trials[killed.number].state == TrialState.FAIL
    assert trials[alive.number].state == trials[elsewhere.number].state == TrialState.RUNNING
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert [t.system_attrs["failed_trial"] for t in waiting] == [killed.number, interrupted.number]
    assert waiting[0].params == killed.params and "worker" not in waiting[0].user_attrs
    assert retry_stopped_trials(search) == []  # once
    retry = search.ask()  # the retry runs, and its worker dies too: not retried again
    retry.set_user_attr("worker", {"host": socket.gethostname(), "pid": _dead_pid(), "trial": retry.number})
    assert retry.number == waiting[0].number and retry_stopped_trials(search) == []


def test_a_setting_proposed_again_gives_its_earlier_result_untrained(tmp_path):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from kerascnn.study.search import _objective, open_study, planned_trial

    searched = load_study(str(write_study_file(tmp_path, TINY + SEARCH)), check=False)
    out = tmp_path / "out"
    out.mkdir()
    search = open_study(searched.search, searched, out)
    distributions = {"lr": FloatDistribution(1e-4, 1e-2, log=True), "batch_size": CategoricalDistribution([32, 64])}
    search.add_trial(optuna.create_trial(params={"lr": 1e-3, "batch_size": 32}, distributions=distributions,
                                         value=0.5))
    search.enqueue_trial({"lr": 1e-3, "batch_size": 32})
    objective = _objective(searched.search, planned_trial(searched.search, searched), out)
    search.optimize(objective, n_trials=1)
    again = search.get_trials()[-1]
    assert again.value == 0.5 and again.user_attrs["same_as"] == 0 and not (out / "trials").exists()


def test_a_search_of_a_finite_space_ends_once_every_setting_is_tried(tmp_path):
    from optuna.distributions import CategoricalDistribution, IntDistribution
    from optuna.trial import TrialState

    from kerascnn.study.search import open_study, search_done

    text = TINY + SEARCH.replace("trials = 3", "budget = 100").replace("{low = 1e-4, high = 1e-2, log = true}",
                                                                       "[1e-3, 1e-2]")
    searched = load_study(str(write_study_file(tmp_path, text.replace("[32, 64]", "{low = 32, high = 33}"))),
                          check=False)
    out = tmp_path / "out"
    out.mkdir()
    search = open_study(searched.search, searched, out)
    distributions = {"lr": CategoricalDistribution([1e-3, 1e-2]), "batch_size": IntDistribution(32, 33)}
    settings = [{"lr": lr, "batch_size": b} for lr in (1e-3, 1e-2) for b in (32, 33)]
    for params in settings[:3] + settings[:3]:  # a sampler proposing tried settings again: no epochs spent
        search.add_trial(optuna.create_trial(params=params, distributions=distributions, value=0.5))
    search.add_trial(optuna.create_trial(params={"lr": 1e-2}, distributions={"lr": distributions["lr"]},
                                         state=TrialState.FAIL))  # died before it had all its settings
    assert not search_done(searched.search, search, out)  # budget left and one setting untried
    search.add_trial(optuna.create_trial(params=settings[3], distributions=distributions, value=0.5))
    assert search_done(searched.search, search, out)  # every setting tried, though the budget is not spent


def _race(tmp_path, monkeypatch, val, failing=(), run_study=None):
    """`race` of four candidates over seeds 0-2 down to one, the runs' validation accuracies given by
    ``val`` (configuration: one per seed), those of ``failing`` failed; the survivors, the records and
    the seeds each round trained."""
    from kerascnn.errors import KerascnnError
    from kerascnn.study import execute
    from kerascnn.study import search as search_module

    searched = load_study(str(write_study_file(tmp_path, TINY + SEARCH.replace(
        "confirm = {top = 1, seeds = [0, 1]}", "confirm = {top = 1, seeds = [0, 1, 2], race = 4}"))), check=False)
    rounds, real_derived_study = [], search_module.derived_study

    def derived_study(*args):
        plan = real_derived_study(*args)
        rounds.append({r.name: (r.config, r.seed) for r in plan.runs})
        return plan

    def summarize_run(folder):
        config, seed = next(run for plan in rounds for name, run in plan.items() if name == folder.name)
        if config in failing:
            raise KerascnnError(f"{folder} is not a finished run")
        return {"val_accuracy": val[config][seed]}

    monkeypatch.setattr(search_module, "derived_study", derived_study)
    monkeypatch.setattr(execute, "run_study", run_study or (lambda plan, out, **execution: None))
    monkeypatch.setattr("kerascnn.reports.summarize_run", summarize_run)
    candidates = [{"trial": n, "params": {"lr": 1e-3 * n}, "val_accuracy": 0.9 - 0.1 * n, "config": f"search-{n}"}
                  for n in (1, 2, 3, 4)]
    survivors, records = search_module.race(searched.search, searched, candidates, tmp_path)
    seeds = [sorted({seed for config, seed in plan.values() if config.startswith("search-")}) for plan in rounds]
    return survivors, {r["config"]: r for r in records}, seeds


def test_the_race_halves_the_candidates_after_each_seed_on_mean_validation(tmp_path, monkeypatch):
    val = {"search-1": [0.2, 0.9], "search-2": [0.8, 0.1], "search-3": [0.7, 0.8], "search-4": [0.6, 0.9]}
    survivors, by_name, seeds = _race(tmp_path, monkeypatch, val)
    # seed 0: means 0.5, 0.75, 0.65, 0.55 -> 2 and 3 stay; seed 1 (the last but one): 0.53, 0.7 -> only 3 stays
    assert [c["config"] for c in survivors] == ["search-3"]
    assert seeds == [[0], [0, 1]]  # the third seed is the confirmation's
    assert by_name["search-2"]["means"] == pytest.approx([0.75, 1.6 / 3])
    assert by_name["search-3"]["means"] == pytest.approx([0.65, 0.7])
    assert by_name["search-2"]["left_after_seed"] == 1 and by_name["search-3"]["left_after_seed"] is None
    assert by_name["search-1"]["left_after_seed"] == by_name["search-4"]["left_after_seed"] == 0
    assert by_name["search-1"]["runs"] == ["search-1-seed0"] and len(by_name["search-2"]["runs"]) == 2
    assert json.loads((tmp_path / "race.json").read_text())["rounds"][1]["means"]["search-3"] == pytest.approx(0.7)

    def must_not_train(plan, out, **execution):
        raise AssertionError("a decided round trained again")

    val["search-2"] = [0.99, 0.99]  # the command again: the rounds decided stay decided, nothing trains
    again, by_name_again, _ = _race(tmp_path, monkeypatch, val, run_study=must_not_train)
    assert again == survivors and by_name_again == by_name


def test_a_candidate_whose_race_run_failed_ranks_last(tmp_path, monkeypatch):
    val = {"search-1": [0.9, 0.9], "search-2": [0.8, 0.8], "search-3": [0.7, 0.7], "search-4": [0.6, 0.6]}
    survivors, by_name, _ = _race(tmp_path, monkeypatch, val, failing=("search-1",))
    assert by_name["search-1"]["failed"] and by_name["search-1"]["left_after_seed"] == 0
    assert by_name["search-1"]["means"] == pytest.approx([0.8])  # its trial alone, which no longer counts first
    assert [c["config"] for c in survivors] == ["search-2"]


@pytest.mark.parametrize("pruner, extra, first", [("hyperband", "", 3), ("successive_halving", "", 3),
                                                  ("hyperband", "min_epochs = 2\n", 2)])
def test_the_pruner_judges_no_trial_before_its_first_epoch(tmp_path, pruner, extra, first):
    from kerascnn.study.search import open_study

    text = TINY.replace("epochs = 3", "epochs = 15") + SEARCH.replace('"successive_halving"', f'"{pruner}"\n{extra}')
    searched = load_study(str(write_study_file(tmp_path, text)), check=False)
    assert searched.search.first_rung(15) == first
    assert open_study(searched.search, searched, tmp_path).pruner._min_resource == first  # Optuna's own attribute


def test_a_shared_storage_refuses_another_search_of_the_same_name(tmp_path):
    from kerascnn.errors import KerascnnError
    from kerascnn.study.search import open_study

    storage = f"\nstorage = 'sqlite:///{tmp_path / 'shared.db'}'\n"
    first = load_study(str(write_study_file(tmp_path, TINY + SEARCH + storage)), check=False)
    open_study(first.search, first, tmp_path)
    open_study(first.search, first, tmp_path, worker=1)  # another worker of the same search: welcome
    other = load_study(str(write_study_file(tmp_path, TINY + SEARCH.replace("trials = 3", "trials = 4") + storage)),
                       check=False)
    with pytest.raises(KerascnnError, match="holds a search named 'tiny' from another version of the file"):
        open_study(other.search, other, tmp_path)


@pytest.mark.slow
def test_a_search_prunes_races_confirms_against_the_baseline_and_resumes(tmp_path):
    out = tmp_path / "out"
    text = TINY + SEARCH.replace("confirm = {top = 1,", "confirm = {top = 1, race = 2,")
    assert study_command([str(write_study_file(tmp_path, text)), "--out", str(out)]) == 0
    summary = json.loads((out / "study.json").read_text())
    report = summary["search"]
    assert len(report["trials"]) == 3 and {t["state"] for t in report["trials"]} <= {"complete", "pruned"}
    for t in report["trials"]:
        folder = trial_folder(out, t["trial"])
        assert rundir.read_status(folder) == t["state"].replace("complete", "finished")
        assert (folder / "model.keras").is_file()  # a pruned trial keeps its best epoch's model
        metrics = json.loads((folder / "metrics.json").read_text())
        assert t["epochs"] == metrics["epochs_run"] and metrics["best_epoch"] <= metrics["epochs_run"]
    complete = sorted(t["val_accuracy"] for t in report["trials"] if t["state"] == "complete")
    [winner] = report["chosen"]
    assert report["winner"] == winner["config"]  # the only one confirmed
    confirm_runs = [f"{winner['config']}-seed{k}" for k in (0, 1)]
    if len(complete) >= 2:  # the best two raced on seed 0; the better by mean validation stayed
        assert [c["val_accuracy"] for c in report["race"]] == complete[::-1][:2]
        [left] = [c for c in report["race"] if c["left_after_seed"] == 0]
        assert winner["config"] != left["config"] and len(left["means"]) == 1
        assert winner["trial"] == max(report["race"], key=lambda c: c["means"][0])["trial"]
        confirm_runs.append(f"{left['config']}-seed0")
    else:
        assert report["race"] is None and winner["val_accuracy"] == complete[0]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("search-")) == sorted(confirm_runs)
    assert report["compute"]["confirm_epochs"] == sum(len(rundir.read_history(out / r)["epoch"]) for r in confirm_runs)
    assert [c["configuration"] for c in summary["configurations"]] == ["base", winner["config"]]
    assert all(c["runs_finished"] == 2 for c in summary["configurations"])
    assert report["compute"]["search_epochs"] == sum(t["epochs"] for t in report["trials"]) + \
        report["compute"]["confirm_epochs"]
    assert report["verdicts"][0]["winner"] == winner["config"] and report["verdicts"][0]["baseline"] == "base"
    text = (out / "study.md").read_text()
    assert "## The search" in text and report["verdicts"][0]["words"] in text
    folders = sorted(p.name for p in (out / "trials").iterdir())
    histories = {r: (out / r / "history.csv").read_text() for r in confirm_runs}
    assert study_command([str(tmp_path / "s.toml"), "--out", str(out)]) == 0  # again: nothing new trains
    assert sorted(p.name for p in (out / "trials").iterdir()) == folders
    assert {r: (out / r / "history.csv").read_text() for r in confirm_runs} == histories
    again = json.loads((out / "study.json").read_text())["search"]
    assert (again["trials"], again["race"], again["winner"]) == (report["trials"], report["race"], report["winner"])


def _postgres_binaries():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    return Path(found[-1]).parent if found[-1] else None


@pytest.fixture
def postgres_url():
    """A PostgreSQL server started here for the test (as the ``postgres`` user when run as root),
    listening on a Unix socket only, in a folder of /tmp that user can reach; its URL."""
    bin_dir = _postgres_binaries()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql)")
    home = Path(tempfile_dir := tempfile.mkdtemp(prefix="kerascnn-pg-"))
    as_user = []
    if os.getuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(home, "postgres")
        os.chmod(home, 0o700)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = home / "data"
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth", "trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(home / "log"), "-o",
                    f"-k {tempfile_dir} -p {port} -c listen_addresses=''", "start"], check=True, capture_output=True)
    try:
        subprocess.run([*as_user, str(bin_dir / "createdb"), "-h", tempfile_dir, "-p", str(port), "-U", "postgres",
                        "search"], check=True, capture_output=True)
        yield f"postgresql+psycopg2://postgres@/search?host={tempfile_dir}&port={port}"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def _command(study_file, out, cwd):
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "experiments.study", str(study_file), "--out", str(out)],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_workers_one_killed(tmp_path, storage_line):
    """Two workers with their own working folders share one storage; one is killed with SIGKILL in
    its first trial; the command is run again. Return the study folder and the Optuna trials."""
    text = TINY.replace("epochs = 3", "epochs = 6\nimage_size = 32").replace('name = "base"\nlr = 1e-3\n',
                                                                         'name = "base"\nlr = 1e-3\nepochs = 1\n')
    text += SEARCH.replace("trials = 3", "trials = 4").replace('"successive_halving"', '"none"') \
        .replace("seeds = [0, 1]", "seeds = [0]") + storage_line
    study_file = write_study_file(tmp_path, text)
    out = tmp_path / "out"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert study_command([str(study_file), "--out", str(out), "--dry-run"]) == 0
    killed = _command(study_file, out, tmp_path / "a")
    other = _command(study_file, out, tmp_path / "b")

    def trials_of(process):
        folders = (out / "trials").glob("trial-*") if (out / "trials").is_dir() else []
        return [f for f in folders if (f / "status.json").is_file()
                and json.loads((f / "status.json").read_text()).get("pid") == process.pid]

    deadline = time.time() + 300
    while time.time() < deadline:  # until both work, the one to kill inside a trial with an epoch done
        if trials_of(other) and any((f / "history.csv").is_file() and rundir.read_status(f) == "running"
                                    for f in trials_of(killed)):
            break
        assert killed.poll() is None and other.poll() is None, (killed.stdout.read(), other.stdout.read())
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    running = [f for f in trials_of(killed) if json.loads((f / "status.json").read_text())["status"] == "running"]
    assert len(running) == 1
    output = other.communicate(timeout=600)[0]
    assert other.returncode == 0, output
    again = _command(study_file, out, tmp_path / "a")
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output
    searched = load_study(str(study_file), check=False)
    from kerascnn.study.search import open_study

    return out, open_study(searched.search, searched, out).get_trials(), running[0]


def _check_every_trial_ran_once(out, trials, killed_folder):
    from optuna.trial import TrialState

    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            t.state == TrialState.FAIL and t.number in retried), (t.number, t.state)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    folders = sorted(p.name for p in (out / "trials").iterdir())
    # one folder per trial that trained (a setting proposed again is not), none lost or doubled
    assert folders == sorted(t.user_attrs["run"] for t in trials if "run" in t.user_attrs)
    killed_trial = next(t for t in trials if t.user_attrs["run"] == killed_folder.name)
    assert killed_trial.state == TrialState.FAIL and killed_trial.number in retried
    assert rundir.read_status(killed_folder) == "interrupted"
    summary = json.loads((out / "study.json").read_text())
    assert summary["search"]["chosen"] and summary["runs_finished"] == summary["runs_planned"]


TORCH_ONLY = pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "torch") != "torch",
                                reason="the storage and the workers' processes are the same on every backend: torch")


@pytest.mark.slow
@TORCH_ONLY
def test_two_workers_share_one_journal_and_survive_a_kill(tmp_path):
    out, trials, killed_folder = _two_workers_one_killed(tmp_path, "")
    assert (out / "search.journal").is_file()
    _check_every_trial_ran_once(out, trials, killed_folder)


@pytest.mark.slow
@TORCH_ONLY
def test_two_workers_share_one_postgresql_database_and_survive_a_kill(tmp_path, postgres_url):
    out, trials, killed_folder = _two_workers_one_killed(tmp_path, f'storage = "{postgres_url}"\n')
    assert not (out / "search.journal").exists()
    _check_every_trial_ran_once(out, trials, killed_folder)
