"""Backbones, stage names, freezing, weights from ImageNet/a file/an earlier run, discriminative LRs."""

import sys

import keras
import numpy as np
import pytest
from run_configs import decided

from kerascnn import data, models, training
from kerascnn.errors import KerascnnError
from kerascnn.models.freezing import layer_stages


def basic_block(cin, cout, stride):
    params = 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout
    return params + (cin * cout + 2 * cout if stride != 1 or cin != cout else 0)


def resnet_stage(blocks, cin, cout, stride):
    return basic_block(cin, cout, stride) + (blocks - 1) * basic_block(cout, cout, 1)


def test_resnet18_trainable_counts_match_torchvision():
    model = models.build("resnet18", (32, 32, 3), 10, weights="none")
    counts = {}
    for unfreeze in ("none", "layer4", "layer3,layer4", "all"):
        models.set_trainable(model, unfreeze)
        counts[unfreeze] = models.trainable_params(model)
    assert counts == {"none": 5_130, "layer4": 8_398_858, "layer3,layer4": 10_498_570, "all": 11_181_642}


def test_resnet34_stages_follow_the_basic_block_formula():
    model = models.build("resnet34", (32, 32, 3), 7, weights="none")
    expected = {
        "conv1": 7 * 7 * 3 * 64 + 2 * 64,
        "layer1": resnet_stage(3, 64, 64, 1),
        "layer2": resnet_stage(4, 64, 128, 2),
        "layer3": resnet_stage(6, 128, 256, 2),
        "layer4": resnet_stage(3, 256, 512, 2),
        "head": 512 * 7 + 7,
    }
    assert models.stage_params(model) == expected
    # torchvision's resnet34 has 21,797,672 parameters with its 1000-class fc
    assert sum(expected.values()) == 21_797_672 - (512 * 1000 + 1000) + 512 * 7 + 7


# torchvision's parameter counts (1000 classes) minus its classifier, plus our head for 10 classes
TORCHVISION = {
    "resnet50": (25_557_032 - 2_049_000, 2048),
    "mobilenet_v2": (3_504_872 - 1_281_000, 1280),
    "mobilenet_v3_small": (2_542_856 - (576 * 1024 + 1024 + 1024 * 1000 + 1000), 576),
    "mobilenet_v3_large": (5_483_032 - (960 * 1280 + 1280 + 1280 * 1000 + 1000), 960),
    "efficientnet_b0": (5_288_548 - 1_281_000, 1280),
}
KERAS_RESNET50_CONV_BIASES = 26_560  # Keras' ResNet-50 convolutions have biases, torchvision's do not


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_keras_application_backbones_match_torchvision_counts(name):
    model = models.build(name, (32, 32, 3), 10, weights="none")
    features, width = TORCHVISION[name]
    head = width * 10 + 10
    models.set_trainable(model, "none")
    assert models.trainable_params(model) == head
    models.set_trainable(model, "all")
    extra = KERAS_RESNET50_CONV_BIASES if name == "resnet50" else 0
    assert models.trainable_params(model) == features + extra + head
    unstaged = [layer.name for layer, stage in layer_stages(model) if stage is None
                and any(w.trainable for w in layer.weights)]
    assert unstaged == []
    stages = list(models.stage_params(model))
    assert stages[-1] == "head" and len(stages) == len(models.get(name).stages) + 1


def test_resnet50_layer4_count():
    model = models.build("resnet50", (32, 32, 3), 10, weights="none")
    models.set_trainable(model, "layer4")

    def bottleneck(cin, width, projection):
        """Keras' ResNet-50 bottleneck: 1x1, 3x3, 1x1 convolutions with biases, each with batch norm."""
        out = 4 * width
        params = (cin * width + width) + 2 * width + (9 * width * width + width) + 2 * width
        params += (width * out + out) + 2 * out
        return params + (cin * out + out + 2 * out if projection else 0)

    layer4 = bottleneck(1024, 512, True) + 2 * bottleneck(2048, 512, False)
    assert models.trainable_params(model) == layer4 + 2048 * 10 + 10


def test_unknown_stage_lists_the_valid_ones():
    model = models.build("resnet18", (32, 32, 3), 10, weights="none")
    with pytest.raises(KerascnnError, match="conv1, layer1, layer2, layer3, layer4, head"):
        models.set_trainable(model, "layer5")
    assert models.set_trainable(model, "fc")["unfrozen_stages"] == ["head"]


def test_torchvision_checkpoint_ports_exactly(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from torch_resnet import random_resnet

    reference = random_resnet(num_classes=10)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = models.build("resnet18", (64, 64, 3), 10, image_size=64, weights="none")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torch", None)  # the port itself needs no PyTorch
        report = models.load_weights(model, tmp_path / "resnet18.pth")
    assert report["layers_new"] == []
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype("float32")
    logits = keras.Model(model.input, model.get_layer("head_logits").output)
    ours = keras.ops.convert_to_numpy(logits(pixels))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    normalized = ((pixels / 255.0 - mean) / std).astype("float32").transpose(0, 3, 1, 2)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(normalized)).numpy()
    assert np.abs(ours - theirs).max() <= 1e-4


def test_imagenet_weights_come_from_keras_cache_and_are_converted_once(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from torch_resnet import random_resnet

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save(random_resnet(seed=1).state_dict(), checkpoint)
    name = stand_in_checkpoint(monkeypatch, checkpoint)  # its hash, as the registry would give the real one's
    checkpoint.rename(tmp_path / "models" / f"{name}.pth")
    first = models.build("resnet18", (32, 32, 3), 5, weights="imagenet")
    assert (tmp_path / "models" / f"{name}.weights.h5").is_file()
    (tmp_path / "models" / f"{name}.pth").unlink()  # the converted cache is enough now
    second = models.build("resnet18", (32, 32, 3), 5, weights="imagenet")
    a, b = first.get_layer("backbone").get_weights(), second.get_layer("backbone").get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def stand_in_checkpoint(monkeypatch, path) -> str:
    """Register ``path`` as resnet18's torchvision checkpoint (its URL names its hash, its sha256 is
    its own); return the file name stem the cache expects."""
    import dataclasses
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = models.get("resnet18")
    weights = dataclasses.replace(spec.weights, url=f"https://download.pytorch.org/models/resnet18-{digest[:8]}.pth",
                                  sha256=digest)
    monkeypatch.setitem(models.MODELS, "resnet18", dataclasses.replace(spec, weights=weights))
    return f"resnet18-{digest[:8]}"


def test_imagenet_checkpoints_are_checked_against_their_sha256(tmp_path, monkeypatch):
    """Keras checks the full digest the registry gives; the prefix a torchvision file name carries
    is checked too (as torchvision's check_hash does), so a wrong file never becomes weights."""
    from kerascnn.models.backbones import check_hash_prefix

    resnet18, resnet34 = models.get("resnet18").weights, models.get("resnet34").weights
    assert resnet18.hash_prefix == "f37072fd" and resnet18.sha256.startswith(resnet18.hash_prefix)
    assert resnet34.hash_prefix == "b627a593" and models.get("resnet50").weights.hash_prefix is None
    asked = {}

    def get_file(name, url, **options):
        asked.update(options, name=name)
        fake = tmp_path / name
        fake.write_bytes(b"not a checkpoint")
        return str(fake)

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.utils, "get_file", get_file)
    with pytest.raises(KerascnnError, match="sha256 does not start with f37072fd.*delete it"):
        models.build("resnet18", (32, 32, 3), 5, weights="imagenet")
    assert asked["file_hash"] == resnet18.sha256 and asked["hash_algorithm"] == "sha256"
    good = tmp_path / "good.bin"
    good.write_bytes(b"abc")  # sha256 ba7816bf...
    check_hash_prefix(good, "ba7816bf")
    check_hash_prefix(good, None)


def test_offline_imagenet_weights_fail_with_the_file_to_place(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.utils, "get_file", lambda *a, **k: (_ for _ in ()).throw(
        Exception("URL fetch failure on https://download.pytorch.org/models/resnet18-f37072fd.pth: None")))
    with pytest.raises(KerascnnError, match=r"\(URL fetch failure .*put resnet18-f37072fd.pth .* in .*models"):
        models.build("resnet18", (32, 32, 3), 5, weights="imagenet")


def test_weights_of_another_architecture_load_with_a_warning(tmp_path, caplog):
    from kerascnn.saving import save_model

    save_model(models.build("cnn3", (8, 8, 1), 10), tmp_path / "other.keras", {})
    model = models.build("cnn", (8, 8, 1), 10, weights=str(tmp_path / "other.keras"))
    assert model.weights_source["layers_loaded"] == 1
    assert any(r.levelname == "WARNING" and "new: block1_conv1" in r.getMessage() for r in caplog.records)


def snapshot(model):
    """``{layer/variable: (stage, is batch norm, value)}`` of every variable."""
    return {f"{layer.name}/{w.name}": (stage, isinstance(layer, keras.layers.BatchNormalization),
                                       keras.ops.convert_to_numpy(w).copy())
            for layer, stage in layer_stages(model) for w in layer.weights}


@pytest.fixture(scope="module")
def digits_small():
    return data.load("digits", split="40,10,10")


@pytest.mark.slow
@pytest.mark.parametrize("bn_policy", ["train", "frozen"])
def test_frozen_stages_do_not_change_while_unfrozen_ones_train(digits_small, bn_policy):
    config = decided("digits", "resnet18", epochs=1, batch_size=32, image_size=32, unfreeze="layer4",
                       bn_policy=bn_policy, lr=0.01, patience=0, verbose=0)
    model = models.build("resnet18", digits_small.image_shape, 10, image_size=32, weights="none")
    before = snapshot(model)
    training.fit(model, digits_small, config)
    after = snapshot(model)
    for key, (stage, batch_norm, value) in before.items():
        changed = not np.array_equal(value, after[key][2])
        if stage in ("conv1", "layer1", "layer2", "layer3"):
            assert not changed, key
        elif stage == "layer4" and batch_norm:  # statistics, gamma and beta move only with bn_policy=train
            assert changed == (bn_policy == "train"), key
        elif stage in ("layer4", "head"):
            assert changed, key


class TrainableCount(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.counts = []

    def on_epoch_begin(self, epoch, logs=None):
        self.counts.append(models.trainable_params(self.model))


@pytest.mark.slow
def test_unfreeze_at_trains_the_head_first_then_the_stages(digits_small):
    config = decided("digits", "resnet18", epochs=3, batch_size=32, image_size=32, weights="none",
                       unfreeze="layer4", unfreeze_at=1, verbose=0)
    model = models.build("resnet18", digits_small.image_shape, 10, image_size=32, weights="none")
    counter = TrainableCount()
    result = training.fit(model, digits_small, config, callbacks=[counter])
    assert counter.counts == [5_130, 8_398_858, 8_398_858]
    assert result.epochs_run == 3 and len(result.history["loss"]) == 3
    lr = result.history["learning_rate"]
    assert lr[1] <= 0.003 / 10 + 1e-9  # the fine-tuning phase peaks at lr / 10
    assert result.stages == {"unfrozen_stages": ["layer4", "head"],
                             "frozen_stages": ["conv1", "layer1", "layer2", "layer3"]}


@pytest.mark.slow
def test_backbone_lr_scale_zero_keeps_the_backbone_and_survives_saving(digits_small, tmp_path):
    config = decided("digits", "cnn", epochs=1, batch_size=32, optimizer="sgd", lr=0.05, backbone_lr_scale=0.0,
                       weight_decay=1e-3, verbose=0, patience=0)
    model = models.build("cnn", digits_small.image_shape, 10)
    before = snapshot(model)
    training.fit(model, digits_small, config)
    after = snapshot(model)
    for key, (stage, _, value) in before.items():
        if stage == "block1" and not key.endswith(("moving_mean", "moving_variance")):
            assert np.array_equal(value, after[key][2]), key
        if key.startswith("head_logits/"):
            assert not np.array_equal(value, after[key][2]), key
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer).__name__ == "DiscriminativeSGD" and loaded.optimizer.backbone_lr_scale == 0.0


@pytest.mark.slow
def test_weights_from_an_earlier_run_rebuild_a_head_of_another_size(tmp_path):
    earlier = models.build("resnet18", (28, 28, 1), 10, image_size=32, weights="none")
    earlier.save(tmp_path / "earlier.keras")
    model = models.build("resnet18", (8, 8, 1), 4, image_size=32, weights="none")
    report = models.load_weights(model, tmp_path / "earlier.keras")
    assert report["layers_new"] == ["head_logits"] and report["layers_loaded"] == 40  # 20 convs, 20 BNs
    for a, b in zip(earlier.get_layer("backbone").weights, model.get_layer("backbone").weights):
        assert np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    with pytest.raises(KerascnnError, match="no layer"):
        models.load_weights(models.build("cnn", (8, 8, 1), 4), tmp_path / "earlier.keras")
    with pytest.raises(KerascnnError, match="no such file"):
        models.load_weights(model, tmp_path / "missing.keras")
