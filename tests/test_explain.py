"""Grad-CAM: its targets, the same maps as pytorch-grad-cam, a sanity check against re-initialised
weights, and the explain command line."""

import keras
import numpy as np
import pytest

from experiments import explain as explain_cli
from experiments.cli import main
from kerascnn import explain, models
from kerascnn.errors import KerascnnError
from kerascnn.saving import save_model


def test_the_default_target_is_the_last_stage_and_an_unknown_layer_lists_the_valid_ones():
    cnn = models.build("cnn", (28, 28, 1), 10)
    assert explain.target_of(cnn, model_name="cnn") == explain.Target("block2", "block2_dropout")
    resnet = models.build("resnet18", (64, 64, 3), 5, image_size=64)
    assert explain.target_of(resnet, model_name="resnet18") == explain.Target("layer4", "backbone")
    assert explain.target_of(resnet, "layer3", "resnet18") == explain.Target("layer3", "layer3_1_out",
                                                                                  "backbone")
    with pytest.raises(KerascnnError, match=r"--layer nope: cnn has no such layer .*valid: block1, block2"):
        explain.target_of(cnn, "nope", "cnn")
    with pytest.raises(KerascnnError, match="cannot be cut at layer3_0_conv1"):
        explain.grad_cam(resnet, np.zeros((1, 64, 64, 3)), layer="layer3_0_conv1", model_name="resnet18")


def test_maps_are_scaled_to_the_image_and_follow_the_class():
    keras.utils.set_random_seed(0)
    model = models.build("cnn", (28, 28, 1), 10)
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1))
    before = model.predict(images, verbose=0)
    result = explain.grad_cam(model, images, model_name="cnn")
    np.testing.assert_array_equal(model.predict(images, verbose=0), before)  # batch norms' statistics untouched
    assert result.maps.shape == (3, 28, 28) and result.maps.min() >= 0 and result.maps.max() <= 1 + 1e-6
    np.testing.assert_allclose(result.probabilities, model.predict(images, verbose=0), atol=1e-5)
    assert np.array_equal(result.classes, result.probabilities.argmax(axis=1))
    other = explain.grad_cam(model, images, classes=(result.classes + 1) % 10, model_name="cnn")
    assert not np.allclose(other.maps, result.maps)


def pytorch_grad_cam_maps(model, images, classes, target):
    """pytorch-grad-cam's GradCAM on the same Keras model: an NCHW module around the model cut at
    the target, whose activations (NHWC) the reshape_transform permutes to NCHW."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    features, head = explain.split(model, target)

    class NCHW(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.keras_model = model  # a torch module on this backend: its parameters tell GradCAM the device
            self.target = torch.nn.Identity()

        def forward(self, x):
            return head(self.target(features(x.permute(0, 2, 3, 1))))

    wrapper = NCHW()
    cam = GradCAM(model=wrapper, target_layers=[wrapper.target], reshape_transform=lambda a: a.permute(0, 3, 1, 2))
    batch = torch.tensor(np.asarray(images, np.float32)).permute(0, 3, 1, 2)
    return cam(input_tensor=batch, targets=[ClassifierOutputTarget(int(c)) for c in classes])


@pytest.mark.parametrize("name, shape, size", [("cnn", (28, 28, 1), None), ("resnet18", (64, 64, 3), 64)])
def test_grad_cam_equals_pytorch_grad_cam(name, shape, size):
    if keras.backend.backend() != "torch":
        pytest.skip("pytorch-grad-cam runs on the torch backend")
    pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (and torchvision): tox -e keras-min")
    keras.utils.set_random_seed(0)
    model = models.build(name, shape, 10, image_size=size)
    images = np.random.default_rng(0).integers(0, 256, (4, *shape)).astype("float32")
    ours = explain.grad_cam(model, images, model_name=name)
    theirs = pytorch_grad_cam_maps(model, images, ours.classes, ours.target)
    assert ours.maps.max() > 0.99  # not a blank map that would match anything
    np.testing.assert_allclose(ours.maps, theirs, atol=1e-4)


@pytest.mark.slow
def test_maps_of_a_trained_cnn_differ_from_those_of_the_same_cnn_reinitialised(tmp_path):
    """Adebayo et al.'s sanity check: a map that does not change when the weights are randomised
    explains nothing."""
    from scipy.stats import spearmanr

    import kerascnn
    from kerascnn.data import load

    run = kerascnn.run(kerascnn.RunConfig("digits", "cnn", epochs=6, image_size=16, verbose=0,
                                          out=str(tmp_path / "run")))
    trained, _ = kerascnn.load_model(run)
    keras.utils.set_random_seed(1)
    random = keras.models.clone_model(trained)  # the same layers, initialised afresh
    test = load("digits").test
    images = test.pixels(np.arange(100), (8, 8, 1))
    classes = test.labels[:100]
    a = explain.grad_cam(trained, images, classes=classes, model_name="cnn").maps
    b = explain.grad_cam(random, images, classes=classes, model_name="cnn").maps
    # A map is all zero where every weighted channel is negative: 3% of them after training on torch, 37%
    # on JAX (the same weights give the same maps on every backend; the training differs)
    informative = a.reshape(100, -1).std(axis=1) > 0
    assert informative.mean() > 0.5
    rho = [spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a[informative], b[informative])]
    assert np.nanmean(rho) < 0.5, f"mean Spearman {np.nanmean(rho):.2f}"


@pytest.fixture
def model_file(tmp_path):
    keras.utils.set_random_seed(0)
    model = models.build("cnn", (16, 16, 1), 3)
    path = tmp_path / "model.keras"
    save_model(model, path, {"class_names": ["a", "b", "c"], "model": "cnn"})
    return path


def explain_command(argv):
    return main(explain_cli.body, explain_cli.parser(), [str(a) for a in argv])


def test_explain_writes_an_overlay_per_image_and_skips_what_is_not_an_image(model_file, tmp_path, capsys):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.full((20, 30), 60 * i, np.uint8)).save(photos / f"p{i}.png")
    (photos / "notes.png").write_text("not an image")
    assert explain_command([model_file, photos, "--out", tmp_path / "cams", "--class", "b"]) == 0
    written = sorted(p.name for p in (tmp_path / "cams").iterdir())
    assert written == ["p0_cam_b.png", "p1_cam_b.png"]
    assert np.asarray(Image.open(tmp_path / "cams" / written[0])).shape == (16, 16, 3)
    err = capsys.readouterr().err
    assert "warning: skipping unreadable image" in err and "notes.png" in err
    assert "1 unreadable image(s) skipped" in err


@pytest.mark.parametrize("argv, message", [
    (["--layer", "block9"], "--layer block9: cnn has no such layer with a feature map; valid: block1, block2"),
    (["--class", "zebra"], "--class 'zebra': the model's classes are a, b, c"),
])
def test_explain_bad_options_are_one_line_errors(model_file, tmp_path, capsys, argv, message):
    image = tmp_path / "x.png"
    __import__("PIL.Image").Image.fromarray(np.zeros((16, 16), np.uint8)).save(image)
    assert explain_command([model_file, image, "--out", tmp_path / "cams", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "cams").exists()
