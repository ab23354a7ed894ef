"""`kerascnn.torch_fast.TorchProgram` runs our models as torch operations and computes their Keras forward."""

from __future__ import annotations

import keras
import numpy as np
import pytest

if keras.backend.backend() != "torch":
    pytest.skip("the fast path is the torch backend's", allow_module_level=True)

import torch  # noqa: E402
from torch_fast_support import (  # noqa: E402
    CASES,
    DEVICE,
    GREY_SAMPLE,
    TracedGraph,
    as_numpy,
    assert_runs_as_torch_ops_like_keras,
    build,
    images,
    tensor,
    twin,
)

from kerascnn import models  # noqa: E402
from kerascnn.saving import all_layers  # noqa: E402
from kerascnn.torch_fast import FastSteps, TorchProgram, dropout, relayout  # noqa: E402


@pytest.mark.parametrize("case", list(CASES))
def test_program_runs_our_models_without_keras_layers_and_matches_their_forward(case, channels_last):
    name, size, channels, options = CASES[case]
    model = build(name, size, channels, **options)
    program = TorchProgram(model, channels_last=channels_last)
    assert program.keras_layers == [] and program.softmax_output
    x = tensor(images(8, size, channels))
    expected = keras.ops.convert_to_numpy(model(x.float(), training=False))
    np.testing.assert_allclose(as_numpy(program(x)), expected, atol=1e-5)


def test_program_in_training_mode_updates_batch_norm_statistics_as_keras_does(channels_last):
    model = build("cnn", 16, 1, sample=GREY_SAMPLE, dropout=0.0, head_dropout=0.0)
    reference = twin(model)
    x = tensor(images(16, 16, 1)).float()
    ours = TorchProgram(model, channels_last=channels_last)(x, training=True)
    theirs = reference(x, training=True)
    np.testing.assert_allclose(as_numpy(ours), keras.ops.convert_to_numpy(theirs), atol=1e-5)
    for a, b in zip(model.non_trainable_weights, reference.non_trainable_weights):  # moving mean and variance
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


# EfficientNet-B0 (2 s) in the slow tier: its operations are in CASES, which the fast tier runs
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "efficientnet_b0" else n
                                  for n in models.model_names()])
def test_every_registered_model_runs_in_the_program_as_keras_runs_it(name):
    scratch = models.get(name).cnn is not None
    model = build(name, 32, 1 if scratch else 3, **({"sample": GREY_SAMPLE} if scratch else {"image_size": 32}))
    x = tensor(images(4, 32, 1 if scratch else 3))
    expected = keras.ops.convert_to_numpy(model(x.float(), training=False))
    program = TorchProgram(model)
    assert program.keras_layers == []
    np.testing.assert_allclose(as_numpy(program(x)), expected, atol=1e-5)


@pytest.mark.parametrize("case", ["mobilenet_v3_small", pytest.param("efficientnet_b0", marks=pytest.mark.slow)])
def test_program_in_training_mode_matches_keras_with_dropout_off(case, channels_last):
    name, size, channels, options = CASES[case]
    model = build(name, size, channels, **options)
    for layer in all_layers(model):  # with dropout on, each would draw its own masks
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    x = tensor(images(8, size, channels))
    expected = keras.ops.convert_to_numpy(twin(model)(x.float(), training=True))
    # batch statistics over 8 images amplify rounding: in channels-last memory EfficientNet-B0's output
    # is 1.0e-5 from float64 arithmetic, Keras' own 6.7e-6 (1.5e-5 apart; 6.6e-6 in NCHW on Keras 3.15,
    # 1.14e-5 on keras-nightly 3.16, whose own float32 arithmetic moved)
    np.testing.assert_allclose(as_numpy(TorchProgram(model, channels_last=channels_last)(x, training=True)), expected,
                               atol=3e-5)


def test_program_runs_bare_arithmetic_in_either_order_and_layout(channels_last):
    inputs = keras.Input((6, 6, 2))
    maps = keras.layers.Conv2D(3, 3, padding="same")(inputs)  # NCHW inside the program
    pooled = keras.layers.GlobalAveragePooling2D()(maps)  # (n, 3)
    x = (3.0 - maps) / 2.0 * maps + 1  # constants before and after, tensor by tensor
    x = x * keras.layers.Reshape((1, 1, 3))(keras.layers.Dense(3)(pooled))  # NCHW by NHWC, broadcast
    x = keras.layers.Reshape((6, 6 * 3))(x)  # NHWC order matters
    outputs = keras.layers.Activation("softmax")(keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    model = keras.Model(inputs, outputs)
    assert_runs_as_torch_ops_like_keras(model, tensor(images(2, 6, 2)).float() / 255, channels_last)


def test_bare_arithmetic_keeps_the_mixed_precision_dtype_keras_computes_in():
    with models.dtype_policy("mixed_bfloat16"):
        inputs = keras.Input((4, 4, 2))
        maps = keras.layers.Conv2D(3, 3, padding="same")(inputs)  # bfloat16 activations
        x = keras.layers.ReLU(6.0)(maps + 3.0) * (1.0 / 6.0)  # MobileNetV3's hard sigmoid
        model = keras.Model(inputs, keras.layers.Activation("linear")(maps * x))
    program = TorchProgram(model)
    assert program.keras_layers == []
    x = tensor(images(2, 4, 2)).float() / 255
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        ours = program(x)
    theirs = model(x)
    assert ours.dtype == theirs.dtype == torch.bfloat16  # no silent float32 upcast of the constants
    np.testing.assert_allclose(as_numpy(ours.float()), as_numpy(theirs.float()), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("noise_shape, constant_over", [
    ((None, 1, 1, 1), (1, 2, 3)),  # whole samples (EfficientNet's)
    ((None, 1, 1, 4), (1, 2)),  # whole channels of each sample
    ((1, 4), (0, 1, 2)),  # shorter than the input: Keras broadcasts it from the last axis
])
def test_dropout_with_a_noise_shape_drops_whole_slices_in_keras_layout(noise_shape, constant_over, channels_last):
    inputs = keras.Input((5, 5, 1))
    maps = keras.layers.Conv2D(4, 1, use_bias=False, kernel_initializer="ones")(inputs)  # NCHW inside
    dropped = keras.layers.Dropout(0.5, noise_shape=noise_shape)(maps)
    model = keras.Model(inputs, keras.layers.Activation("linear")(dropped))
    program = TorchProgram(model, channels_last=channels_last)
    assert program.keras_layers == []
    torch.manual_seed(0)
    out = as_numpy(program(torch.ones(64, 5, 5, 1, device=DEVICE), training=True))  # NHWC, as Keras returns it
    assert set(np.unique(out)) == {0.0, 2.0}  # kept values scaled by 1 / (1 - rate)
    assert (out.min(axis=constant_over) == out.max(axis=constant_over)).all()  # one draw per slice
    if noise_shape[0] is None:  # 64 draws or more
        assert 0.3 < (out == 0).mean() < 0.7
    np.testing.assert_array_equal(as_numpy(program(torch.ones(2, 5, 5, 1, device=DEVICE))), 1.0)  # inference: identity


def test_dropout_scales_kept_values_at_full_precision_and_drops_all_at_rate_one():
    x = torch.randn(4096).to(torch.bfloat16)
    rate = 0.0125  # EfficientNet's smallest per-sample rate: 1 / (1 - rate) is not a bfloat16 number
    for noise_shape in (None, (4096,)):
        out = dropout(x, rate, noise_shape)
        kept = out != 0
        assert out.dtype == torch.bfloat16 and 0.9 < kept.float().mean() < 1.0
        torch.testing.assert_close(out[kept], (x.float() * (1 / (1 - rate))).to(torch.bfloat16)[kept], rtol=0, atol=0)
    assert not dropout(x, 1.0).any()


def test_rescaling_by_one_constant_per_channel_runs_in_the_program():
    inputs = keras.Input((4, 4, 3))  # EfficientNet's ImageNet input: Rescaling([1 / sqrt(std) ...])
    x = keras.layers.Rescaling([0.5, 2.0, -1.0], offset=0.25)(inputs)
    x = keras.layers.Conv2D(3, 1, name="conv")(x)  # NCHW from here on
    x = keras.layers.Rescaling(0.5, offset=[1.0, 0.0, -1.0])(x)
    outputs = keras.layers.Activation("softmax")(keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    model = keras.Model(inputs, outputs)
    assert_runs_as_torch_ops_like_keras(model, tensor(images(2, 4, 3)).float() / 255)


def test_program_runs_layers_and_operations_it_lacks_through_keras():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.ops.maximum(x, 0.5)  # an operation with a constant, which takes no `training`
    # ranks 4 and 2, which broadcast in NHWC: (8, 4) against (n, 8, 8, 4) needs a batch of 1 or 8
    x = x + keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    x = keras.layers.SpatialDropout2D(0.0)(x)  # a layer that does take `training`
    x = keras.layers.UpSampling2D()(x)  # not in the program's table
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Activation("softmax")(keras.layers.Dense(3)(x))
    model = keras.Model(inputs, outputs)
    program = TorchProgram(model)
    assert [name.split("_")[0] for name in program.keras_layers] == ["maximum", "add", "spatial", "up"]
    x = tensor(images(8, 8, 3)).float()
    for mode in (False, True):
        np.testing.assert_allclose(as_numpy(program(x, training=mode)),
                                   keras.ops.convert_to_numpy(model(x, training=mode)), atol=1e-6)
    cnn = build("cnn", 16, 1, sample=GREY_SAMPLE)
    for m in (model, cnn):
        m.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    with pytest.MonkeyPatch.context() as patch:  # Keras layers copy constants and read seeds on the host
        patch.setitem(FastSteps.GRAPHS, DEVICE.type, TracedGraph)
        steps = FastSteps(model)
        assert steps._adam is not None and steps._graph_class is None
        assert FastSteps(cnn)._graph_class is TracedGraph


def test_concatenate_runs_in_the_program_on_feature_maps_and_on_flat_features():
    inputs = keras.Input((6, 6, 1))
    maps = keras.layers.Concatenate()([inputs, keras.layers.Conv2D(2, 3, padding="same")(inputs)])
    flat = keras.layers.GlobalAveragePooling2D()(maps)
    both = keras.layers.Concatenate()([flat, keras.layers.Dense(4)(flat)])
    model = keras.Model(inputs, keras.layers.Activation("softmax")(keras.layers.Dense(3)(both)))
    assert_runs_as_torch_ops_like_keras(model, tensor(images(2, 6, 1)).float())


def test_relayout_keeps_values_and_the_parameter_object():
    p = torch.nn.Parameter(torch.randn(3, 3, 4, 5))
    before, identity = p.detach().clone(), id(p)
    relayout(p, (3, 2, 0, 1))
    assert id(p) == identity and p.permute(3, 2, 0, 1).is_contiguous()
    torch.testing.assert_close(p.detach(), before, rtol=0, atol=0)
