import pytest

import kerascnn
from kerascnn.config import RunConfig
from kerascnn.data.splits import parse_split
from kerascnn.errors import KerascnnError


def test_parse_split_counts_and_fractions():
    assert parse_split("300,75,75") == ("counts", (300.0, 75.0, 75.0))
    assert parse_split("0.7, 0.15, 0.15") == ("fractions", (0.7, 0.15, 0.15))
    assert parse_split("0.8,0,0.2") == ("fractions", (0.8, 0.0, 0.2))


@pytest.mark.parametrize("text", ["300,75", "a,b,c", "0.9,0.2,0.2", "0,0.5,0.5", "300,75,0", "-1,1,1"])
def test_parse_split_rejects(text):
    with pytest.raises(KerascnnError, match="split"):
        parse_split(text)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epochs": 0}, "--epochs"),
        ({"lr": -1.0}, "--lr"),
        ({"optimizer": "rmsprop"}, "adam, adamw, sgd"),
        ({"lr_schedule": "step"}, "--lr-step"),
        ({"val_split": 1.0}, "--val-split"),
        ({"augment": "heavy"}, "none, basic, strong"),
        ({"split": "1,2"}, "--split"),
        ({"translate": 2.0}, "--translate"),
        ({"erase": 1.5}, "--erase must be a probability"),
        ({"cache": "gpu"}, "auto, ram, disk, none"),
        ({"mixup": -0.2}, "--mixup"),
        ({"filters": [32, 0]}, "--filters"),
        ({"convs_per_block": [1, 0]}, "--convs-per-block takes positive"),
        ({"convs_per_block": []}, "--convs-per-block needs a count"),
        ({"weights": " "}, "--weights is empty"),  # not read as none by one check and as a file by another
        ({"unfreeze_at": 14}, r"--unfreeze-at must be an epoch in 0\.\.13"),
        ({"unfreeze_at": 2, "unfreeze": "none"}, "--unfreeze-at needs stages to unfreeze"),
        ({"unfreeze_at": 0, "finetune_lr": 1e-4}, r"--finetune-lr is the LR after --unfreeze-at EPOCH \(>= 1\)"),
    ],
)
def test_validate_rejects_with_one_line(changes, message):
    with pytest.raises(KerascnnError, match=message) as info:
        RunConfig("digits", "cnn", **changes).validate()
    assert "\n" not in str(info.value)


def test_unfreeze_at_0_trains_the_stages_from_the_start_in_one_phase():
    """0 is a search space's "no head-alone epochs" (``unfreeze_at = [0, 2, 5]``), with or without stages."""
    from kerascnn.resolution import resolve
    from kerascnn.training import phases

    for unfreeze in ("all", "none"):
        config = resolve(RunConfig("digits", "resnet18", weights="none", unfreeze=unfreeze, unfreeze_at=0)).config
        assert [(p.start, p.stop, p.unfreeze) for p in phases(config)] == [(0, config.epochs, unfreeze)]


def test_a_single_convs_per_block_from_an_older_config_reads_as_a_list():
    assert RunConfig("digits", "cnn", convs_per_block=2).convs_per_block == [2]


def test_lr_step_implies_step_schedule(tmp_path):
    from kerascnn.resolution import resolve

    config = resolve(RunConfig("digits", "cnn", lr_step=5)).config
    assert config.lr_schedule == "step"
    assert resolve(RunConfig("digits", "cnn")).config.lr_schedule == "onecycle"
    config.save(tmp_path / "c.json")
    assert RunConfig.load(tmp_path / "c.json") == config


@pytest.mark.parametrize("model, label_smoothing", [("cnn", 0.1), ("cnn3", 0.0), ("resnet18", 0.0)])
def test_label_smoothing_defaults_to_the_model_s_and_an_explicit_value_wins(model, label_smoothing):
    from kerascnn.resolution import resolve

    assert resolve(RunConfig("digits", model, weights="none")).config.label_smoothing == label_smoothing
    assert resolve(RunConfig("digits", model, weights="none", label_smoothing=0.0)).config.label_smoothing == 0.0


@pytest.mark.parametrize("model, options, lr", [
    ("cnn", {}, 3e-3),  # scratch CNN presets keep their LR
    ("resnet18", {"weights": "none"}, 3e-3),  # from scratch: no pretrained features to keep
    ("resnet18", {"weights": "model.keras", "unfreeze": "all"}, 3e-4),  # fine-tuning another run's model
    ("resnet18", {}, 3e-3),  # ImageNet weights, head only
    ("resnet18", {"unfreeze": "layer4"}, 3e-3),
    ("resnet18", {"unfreeze": "layer3,layer4"}, 3e-4),
    ("resnet18", {"unfreeze": "all"}, 3e-4),
    ("resnet18", {"unfreeze": "all", "unfreeze_at": 3}, 3e-3),  # the head alone first, then lr / 10
    ("resnet18", {"unfreeze": "all", "unfreeze_at": 0}, 3e-4),  # 0: the stages train from the start
    ("mobilenet_v2", {"unfreeze": "all"}, 3e-4),
    ("resnet18", {"unfreeze": "all", "lr": 1e-2}, 1e-2),  # given: kept
])
def test_the_default_lr_is_lower_when_several_pretrained_backbone_stages_train(model, options, lr, tmp_path,
                                                                               monkeypatch):
    from kerascnn.resolution import resolve

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.keras").touch()  # the rule reads the name; the file is only checked to exist
    assert resolve(RunConfig("digits", model, **options)).config.lr == lr


def test_resolving_decides_every_default_once_and_leaves_the_given_config_alone():
    """`resolve` is the one place defaults are decided: the caller's config is unchanged, the result
    holds no open default, and resolving it again changes nothing."""
    import dataclasses

    from kerascnn import distribute
    from kerascnn.resolution import resolve

    given = RunConfig("digits", "resnet18", unfreeze="layer3,layer4", lr_step=2)
    before = dataclasses.replace(given)
    machine = distribute.Environment("torch", 1, bfloat16=False, amx=False, description={"device": "cpu"})
    resolved = resolve(given, machine)
    assert given == before
    decided = resolved.config
    assert (decided.weights, decided.unfreeze, decided.lr, decided.lr_schedule) == (
        "imagenet", "layer3,layer4", 3e-4, "step")
    assert (decided.label_smoothing, decided.image_size, decided.precision) == (0.0, 224, "float32")
    assert decided.architecture["backbone"] == "resnet18" and decided.environment == {"device": "cpu"}
    assert resolved.devices.count == 1 and resolved.training is decided and resolved.fast_path
    assert resolve(decided, machine) == resolved
    assert kerascnn.resolve is resolve  # the package's name for it
    on_a_gpu = dataclasses.replace(machine, bfloat16=True)
    assert resolve(given, on_a_gpu).config.precision == "mixed_bfloat16"
    assert not resolve(dataclasses.replace(given, jit=False), machine).fast_path


def test_an_option_is_one_field_which_the_command_line_validation_and_studies_follow(tmp_path, monkeypatch):
    """Adding an option is adding one `RunConfig` field: a toy option appears in --help, is parsed and
    checked by its rules, and a study file can set it as an axis that tunes a strategy."""
    import dataclasses

    from experiments import run as run_cli
    from kerascnn import config, study

    @dataclasses.dataclass
    class ToyConfig(config.RunConfig):
        toy_gain: float = config.option(1.0, "a toy gain of the loss", "training", low=0, high=10, hyper=True)

    monkeypatch.setattr(config, "RunConfig", ToyConfig)
    parser = run_cli.parser()
    assert "--toy-gain TOY_GAIN a toy gain of the loss (default: 1.0)" in " ".join(parser.format_help().split())
    args = parser.parse_args(["digits", "cnn", "--toy-gain", "2.5"])
    args.argv = []
    assert run_cli.config_from_args(args).toy_gain == 2.5
    with pytest.raises(KerascnnError, match=r"--toy-gain must be in \[0, 10\], got 20") as info:
        ToyConfig("digits", "cnn", toy_gain=20.0).validate()
    assert info.value.option == "toy_gain"
    path = tmp_path / "toy.toml"
    path.write_text('dataset = "digits"\nmodel = "cnn"\nepochs = 1\ngrid.toy_gain = [0.5, 2.0]\n'
                    '[[config]]\nname = "a"\n')
    runs = study.load_study(str(path), check=False).runs
    assert [r.options["toy_gain"] for r in runs] == [0.5, 2.0]
    assert {r.group for r in runs} == {"a"}  # a hyper-parameter: one strategy, its best setting chosen
    path.write_text(path.read_text().replace("[0.5, 2.0]", "[0.5, 20.0]"))
    with pytest.raises(KerascnnError, match=r"toy.toml line 4: run a-toy_gain-20.0-seed0: --toy-gain must be in"):
        study.load_study(str(path))


def test_every_scratch_cnn_option_is_a_cnn_spec_field_and_every_optimizer_has_its_classes():
    from kerascnn import config
    from kerascnn.models import CNN_OPTIONS
    from kerascnn.optimizers import optimizer_classes

    assert set(CNN_OPTIONS) == {name for name, rules in config.options().items() if rules.applies == "cnn"}
    for name in config.options()["optimizer"].choices:
        plain, scaled = optimizer_classes(name)
        assert issubclass(scaled, plain) and plain.__name__.lower() == name


def test_experiments_run_holds_no_option_text():
    """The command line's options come from the schema: run.py states no help or choices of its own."""
    import re
    from pathlib import Path

    source = (Path(__file__).resolve().parents[1] / "experiments" / "run.py").read_text()
    assert set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", source)) == {"--resume", "--list-stages"}
    assert "choices=" not in source.replace("choices=rules.choices", "")
