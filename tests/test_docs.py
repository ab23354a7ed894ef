"""The README and the documentation site: short, timeless, their commands valid, their figures the data's."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
COMMAND_PAGES = (README, DOCS / "getting-started.md")  # every command here is checked
sys.path.insert(0, str(DOCS))

import hooks  # noqa: E402
import render_results  # noqa: E402

HASH = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
DATE = re.compile(r"\b(19|20)\d\d-\d\d-\d\d\b|\b(19|20)\d\d(0[1-9]|1[0-2])[0-3]\d-\d{6}\b")
SCRIPTS = {"kerascnn-run": "run", "kerascnn-predict": "predict", "kerascnn-study": "study",
           "kerascnn-compare": "compare", "kerascnn-export": "export", "kerascnn-lr-find": "lr_find",
           "kerascnn-cache": "cache", "kerascnn-explain": "explain"}


def commands(page: Path) -> list[str]:
    """Every ``python -m experiments.X ...`` or ``kerascnn-X ...`` command of the page's shell code blocks."""
    found = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("python -m experiments.") or part.split(" ")[0] in SCRIPTS:
                    found.append(part)
    return found


def parse(command: str):
    """Parse ``command`` with its module's parser (nothing runs); return (module name, parsed args)."""
    argv = shlex.split(command)
    if argv[0] == "python":
        name, argv = argv[2].removeprefix("experiments."), argv[3:]
    else:
        name, argv = SCRIPTS[argv[0]], argv[1:]
    module = importlib.import_module(f"experiments.{name}")
    if name == "lr_find":  # its own options, then any experiments.run option
        args, rest = module.parser().parse_known_args(argv)
        run_args = importlib.import_module("experiments.run").parser().parse_args([args.dataset, args.model, *rest])
        return "run", run_args
    return name, module.parser().parse_args(argv)


def test_the_readme_is_short_and_has_no_commit_or_date():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert not HASH.findall(text), "the README names commits"
    assert not DATE.search(text), "the README names dates"


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=lambda p: p.name)
def test_every_command_of_the_readme_and_getting_started_parses(page):
    from experiments import run as run_cli

    found = commands(page)
    assert any(c.startswith("python -m experiments.run") for c in found)
    for command in found:
        try:
            name, args = parse(command)
        except SystemExit as exc:
            pytest.fail(f"{page.name}: {command!r} does not parse (exit {exc.code})")
        if name == "run" and args.dataset and args.model:
            args.argv = shlex.split(command)[3:]
            run_cli.config_from_args(args).validate()


def test_the_readmes_own_commands_are_found():
    found = commands(README)
    assert "python -m experiments.run fashion_mnist cnn" in found  # the main job, after the install
    assert "python -m experiments.run folder:photos resnet18 --unfreeze layer4 --augment basic --out runs/pets" in found
    assert "python -m experiments.run animals10 resnet18 --unfreeze layer3,layer4" in found
    assert any(c.startswith("python -m experiments.study") for c in found)
    assert any(c.startswith("python -m experiments.export") for c in found)
    assert any(c.startswith("python -m experiments.run --resume") for c in found)
    assert "pip install tox && tox p\n" in README.read_text()  # CI runs the README's test command


def test_a_mistyped_command_is_caught():
    with pytest.raises(SystemExit):
        parse("python -m experiments.run digits cnn --epoch 1")


@pytest.mark.parametrize("page", render_results.pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_each_page_agrees_with_its_data(page):
    text = page.read_text()
    assert render_results.render(text, page) == text, f"{page.name}: run python docs/render_results.py"


def test_every_results_table_is_shown_and_every_row_says_where_it_comes_from():
    shown = {m["name"] for page in render_results.pages() for m in render_results.MARKER.finditer(page.read_text())}
    for path in sorted((DOCS / "results").glob("*.json")):
        data = json.loads(path.read_text())
        if "table" not in data:
            continue
        assert path.stem in shown, f"{path.name} is shown on no page"
        rows = render_results.rows(data)
        assert rows, path.name
        for row in rows:
            assert re.fullmatch(r"[0-9a-f]{7,40}", row.get("commit", "")), (path.name, row)
            assert row.get("machine") and row.get("command") and row.get("date"), (path.name, row)
            assert "project's machine" not in row["machine"]


def test_the_renderer_fills_templates_and_filters_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(render_results, "RESULTS", tmp_path)
    columns = [["case", "`{case}`"], ["ms", "{ms:.1f}"], ["who", "{measurement}"]]
    data = {"command": "cmd", "table": {"columns": columns},
            "measurements": {"before": {"commit": "abc1234", "rows": [{"case": "a", "ms": 1.25}, {"case": "b"}]}}}
    (tmp_path / "t.json").write_text(json.dumps(data))
    page = "x\n<!-- results: t case=a -->\nstale\n<!-- /results -->\ny"
    rendered = render_results.render(page, tmp_path / "p.md")
    assert "| `a` | 1.2 | before |" in rendered and "`b`" not in rendered and "stale" not in rendered
    assert render_results.render(rendered, tmp_path / "p.md") == rendered
    unfiltered = render_results.render(page.replace(" case=a", ""), tmp_path / "p.md")
    assert "| `b` |  | before |" in unfiltered  # a missing field is an empty cell


def test_the_options_page_is_the_parser():
    from experiments import run as run_cli

    page = hooks.options("experiments.run")
    for action in run_cli.parser()._actions:
        for flag in action.option_strings:
            if flag not in ("-h", "--help"):
                assert f"`{flag}" in page or f", {flag}" in page, flag
    assert "| `--epochs EPOCHS` | `14` |" in page
    assert "`adamw`" in page
    assert "<!-- options: experiments.run -->" in (DOCS / "options.md").read_text()


def test_the_framework_tax_record_appends_a_measurement(tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="the framework tax benchmark is the torch backend's")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    framework_tax = importlib.import_module("framework_tax")
    path = tmp_path / "framework_tax.json"
    path.write_text(json.dumps({"what": "w", "measurements": {"old": {"commit": "abc1234", "rows": []}}}))
    framework_tax.record(path, "after", [{"case": "cnn", "ratio": 0.9}], "python benchmarks/framework_tax.py --json")
    data = json.loads(path.read_text())
    assert list(data["measurements"]) == ["old", "after"]
    new = data["measurements"]["after"]
    assert new["rows"] == [{"case": "cnn", "ratio": 0.9}] and new["command"].startswith("python benchmarks/")
    assert new["commit"] and new["machine"] and new["date"]


@pytest.mark.slow
def test_the_readmes_first_recipe_runs_on_a_folder_of_images(tmp_path, monkeypatch):
    """The walk-through, on a tiny generated folder: trains (one epoch, no ImageNet download), then predicts."""
    from PIL import Image

    from experiments import predict as predict_cli
    from experiments import run as run_cli
    from experiments.cli import main

    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog", "fox")):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(rng.normal(40 + 80 * c, 30, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / name / f"IMG_{i:04d}.jpg")
    (tmp_path / "new_photos").mkdir()
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(tmp_path / "new_photos" / "a.png")
    monkeypatch.chdir(tmp_path)
    train = next(c for c in commands(README) if c.startswith("python -m experiments.run folder:"))
    offline = ["--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--verbose", "0"]
    assert main(run_cli.body, run_cli.parser(), shlex.split(train)[3:] + offline) == 0
    assert (tmp_path / "runs" / "pets" / "report.md").is_file()
    predict = next(c for c in commands(README) if c.startswith("python -m experiments.predict runs/pets new_photos/"))
    assert main(predict_cli.body, predict_cli.parser(), shlex.split(predict)[3:]) == 0
