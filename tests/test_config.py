import pytest

from kerascnn.config import RunConfig, parse_split
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
    ],
)
def test_validate_rejects_with_one_line(changes, message):
    with pytest.raises(KerascnnError, match=message) as info:
        RunConfig("digits", "cnn", **changes).validate()
    assert "\n" not in str(info.value)


def test_a_single_convs_per_block_from_an_older_config_reads_as_a_list():
    assert RunConfig("digits", "cnn", convs_per_block=2).convs_per_block == [2]


def test_lr_step_implies_step_schedule(tmp_path):
    config = RunConfig("digits", "cnn", lr_step=5)
    assert config.lr_schedule == "step"
    assert RunConfig("digits", "cnn").lr_schedule == "onecycle"
    config.save(tmp_path / "c.json")
    assert RunConfig.load(tmp_path / "c.json") == config


@pytest.mark.parametrize("model, label_smoothing", [("cnn", 0.1), ("cnn3", 0.0), ("resnet18", 0.0)])
def test_label_smoothing_defaults_to_the_model_s_and_an_explicit_value_wins(model, label_smoothing):
    from kerascnn.runner import resolve_config

    assert resolve_config(RunConfig("digits", model, weights="none")).label_smoothing == label_smoothing
    assert resolve_config(RunConfig("digits", model, weights="none", label_smoothing=0.0)).label_smoothing == 0.0


@pytest.mark.parametrize("model, options, lr", [
    ("cnn", {}, 3e-3),  # scratch CNN presets keep their LR
    ("resnet18", {"weights": "none"}, 3e-3),  # from scratch: no pretrained features to keep
    ("resnet18", {"weights": "run/model.keras", "unfreeze": "all"}, 3e-4),  # fine-tuning another run's model
    ("resnet18", {}, 3e-3),  # ImageNet weights, head only
    ("resnet18", {"unfreeze": "layer4"}, 3e-3),
    ("resnet18", {"unfreeze": "layer3,layer4"}, 3e-4),
    ("resnet18", {"unfreeze": "all"}, 3e-4),
    ("resnet18", {"unfreeze": "all", "unfreeze_at": 3}, 3e-3),  # the head alone first, then lr / 10
    ("mobilenet_v2", {"unfreeze": "all"}, 3e-4),
    ("resnet18", {"unfreeze": "all", "lr": 1e-2}, 1e-2),  # given: kept
])
def test_the_default_lr_is_lower_when_several_pretrained_backbone_stages_train(model, options, lr):
    from kerascnn.config import RunConfig

    assert RunConfig("digits", model, **options).resolve().lr == lr
