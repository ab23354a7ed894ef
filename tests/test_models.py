import keras
import numpy as np
import pytest

from kerascnn import models
from kerascnn.errors import KerascnnError
from kerascnn.models.batch_norm import BN_MOMENTUM
from kerascnn.saving import all_layers


def trainable(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


@pytest.mark.parametrize("name", ["cnn", "cnn3", "cnn2bn"])
def test_presets_output_probabilities(name):
    model = models.build(name, (28, 28, 1), 10)
    pixels = np.random.default_rng(0).integers(0, 255, (2, 28, 28, 1)).astype("float32")
    proba = keras.ops.convert_to_numpy(model(pixels))
    assert proba.shape == (2, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_cnn2bn_has_the_source_layout():
    model = models.build("cnn2bn", (28, 28, 1), 10)
    # conv 5x5x1x32 + BN(32) + conv 5x5x32x64 + BN(64) + FC 3136->1000 (bias) + FC 1000->10
    expected = 5 * 5 * 32 + 2 * 32 + 5 * 5 * 32 * 64 + 2 * 64 + (7 * 7 * 64 + 1) * 1000 + 1001 * 10
    assert trainable(model) == expected
    assert isinstance(model.get_layer("block1_act1"), keras.layers.LeakyReLU)
    assert model.get_layer("block1_conv1").kernel_size == (5, 5)


def test_cnn5_on_256_colour_images_and_too_small_inputs():
    model = models.build("cnn5", (256, 256, 3), 4)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert len(convs) == 5 and len(dense) == 1 and model.output_shape == (None, 4)
    with pytest.raises(KerascnnError, match="--image-size"):
        models.build("cnn5", (8, 8, 1), 10)


def test_options_override_the_preset():
    model = models.build("cnn", (16, 16, 3), 3, filters=[8, 16, 32], convs_per_block=1, batch_norm=False,
                         activation="gelu", pool="avg", dense=[])
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [8, 16, 32]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert isinstance(model.get_layer("block1_pool"), keras.layers.AveragePooling2D)


def test_convs_per_block_takes_one_count_per_block():
    model = models.build("cnn", (16, 16, 1), 3, filters=[8, 16, 32], convs_per_block=[1, 2, 3])
    convs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs == ["block1_conv1", "block2_conv1", "block2_conv2", "block3_conv1", "block3_conv2", "block3_conv3"]
    single = models.build("cnn", (16, 16, 1), 3, filters=[8, 16], convs_per_block=[3])
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in single.layers) == 6
    with pytest.raises(KerascnnError, match="gives 2 counts for 3 blocks"):
        models.check("cnn", filters=[8, 16, 32], convs_per_block=[1, 2])


@pytest.mark.parametrize("norm_after_pool", [False, True])
def test_norm_after_pool_pools_each_block_s_last_convolution_before_its_norm(norm_after_pool):
    model = models.build("cnn", (16, 16, 1), 3, filters=[8, 16], norm_after_pool=norm_after_pool)
    order = [layer.name for layer in model.layers if layer.name.startswith("block1")]
    late = ["block1_conv2", "block1_bn2", "block1_act2", "block1_pool"]
    early = ["block1_conv2", "block1_pool", "block1_bn2", "block1_act2"]
    assert order[3:7] == (early if norm_after_pool else late)
    assert model.get_layer("block2_bn2").output.shape[1:3] == ((4, 4) if norm_after_pool else (8, 8))


def test_weights_none_or_None_build_a_fresh_model():
    assert models.build("cnn", (8, 8, 1), 3, weights=None).weights_source == {"source": "none"}


def test_preprocessing_inside_takes_raw_pixels():
    sample = np.stack([np.full((12, 12, 1), 80), np.full((12, 12, 1), 120)]).astype(np.uint8)  # mean 100, var 400
    model = models.build("cnn", (12, 12, 1), 2, image_size=16, sample=sample)
    normalise = keras.Model(model.input, model.get_layer("normalize").output)
    out = keras.ops.convert_to_numpy(normalise(np.full((1, 12, 12, 1), 120.0, "float32")))
    assert out.shape == (1, 16, 16, 1)
    np.testing.assert_allclose(out, 1.0, atol=1e-5)  # (120 - 100) / sqrt(400)


def test_channel_stats():
    images = np.stack([np.zeros((2, 2, 3)), np.full((2, 2, 3), 10)]).astype(np.uint8)
    mean, variance = models.channel_stats(images)
    assert mean == [5.0, 5.0, 5.0] and variance == [25.0, 25.0, 25.0]


def test_unknown_model_lists_valid_names():
    with pytest.raises(KerascnnError, match="valid models: cnn, cnn3, cnn2bn, cnn5"):
        models.build("resnet9", (28, 28, 1), 10)


@pytest.mark.parametrize("name", models.model_names())
def test_every_batch_norm_moves_at_pytorch_momentum(name):
    """Keras applications' 0.99/0.999 left short runs validating at chance (batch_norm.BN_MOMENTUM)."""
    spec = models.get(name)
    scratch = spec.cnn is not None
    model = models.build(name, (32, 32, 1 if scratch else 3), 4, **({} if scratch else {"image_size": 32}))
    momenta = {layer.momentum for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == ({BN_MOMENTUM} if not scratch or spec.cnn.batch_norm else set())
