"""The fast torch path (`kerascnn.torch_fast`) computes what Keras' own steps compute."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import keras
import numpy as np
import pytest

if keras.backend.backend() != "torch":
    pytest.skip("the fast path is the torch backend's", allow_module_level=True)

import torch  # noqa: E402

from kerascnn import keras_compat, models, training  # noqa: E402
from kerascnn.config import RunConfig  # noqa: E402
from kerascnn.saving import all_layers, load_model, save_model  # noqa: E402
from kerascnn.torch_fast import FastSteps, TorchProgram, dropout, relayout, schedule_value  # noqa: E402

# Where Keras puts the weights: the GPU when there is one (benchmarks/gpu_session.sh runs this file
# there); the tolerances below are float32's, so cuDNN's default TF32 convolutions are off.
DEVICE = torch.device(keras_compat.torch_device_name())
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False  # off by default, but some containers turn it on

STEPS = 6
# Losses after STEPS Adam steps agree to this (float32 rounding through six updates, measured ~1e-6).
LOSS_RTOL = 1e-4


@pytest.fixture(params=["nchw", "channels_last"])
def channels_last(request, monkeypatch) -> bool:
    """Both memory layouts of feature maps on whatever device runs the tests: the fast steps use
    channels-last on CUDA and NCHW elsewhere (`FastSteps.CHANNELS_LAST`), so a CPU checks the GPU's."""
    monkeypatch.setitem(FastSteps.CHANNELS_LAST, DEVICE.type, request.param == "channels_last")
    return request.param == "channels_last"


GREY_SAMPLE = np.array([45, 155], np.uint8).reshape(2, 1, 1, 1)  # normalisation statistics: mean 100, variance 3025


def tensor(a: np.ndarray) -> torch.Tensor:
    """``a`` on `DEVICE`."""
    return torch.from_numpy(a).to(DEVICE)


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def build(name: str, size: int, channels: int, **options) -> keras.Model:
    keras.utils.set_random_seed(0)
    return models.build(name, (size, size, channels), 4, **options)


def twin(model: keras.Model) -> keras.Model:
    """A second model with the same architecture and weights."""
    other = keras.Model.from_config(model.get_config())
    other.set_weights(model.get_weights())
    return other


def assert_runs_as_torch_ops_like_keras(model: keras.Model, x: torch.Tensor, channels_last: bool = False) -> None:
    """The program runs ``model`` with no Keras layer and computes its forward (float32 rounding)."""
    program = TorchProgram(model, channels_last=channels_last)
    assert program.keras_layers == []
    np.testing.assert_allclose(as_numpy(program(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6)


CASES = {  # name, size, channels, build options
    "cnn": ("cnn", 16, 1, {"sample": GREY_SAMPLE}),
    "cnn_variant": ("cnn", 16, 1, {"sample": GREY_SAMPLE, "convs_per_block": [1, 2], "norm_after_pool": True}),
    "resnet18": ("resnet18", 32, 3, {"image_size": 32}),
    "mobilenet_v2": ("mobilenet_v2", 32, 3, {"image_size": 32}),
    "resnet18_grey_resized": ("resnet18", 28, 1, {"image_size": 32}),  # the offline transfer study's input
    # MobileNetV3's hard sigmoid is bare operations (x + 3.0, x * (1 / 6)); EfficientNet has squeeze-excite
    # reshapes and per-sample dropout (noise_shape)
    "mobilenet_v3_small": ("mobilenet_v3_small", 32, 3, {"image_size": 32}),
    "efficientnet_b0": ("efficientnet_b0", 32, 3, {"image_size": 32}),
}


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


@pytest.mark.parametrize("name", models.model_names())
def test_every_registered_model_runs_in_the_program_as_keras_runs_it(name):
    scratch = models.get(name).cnn is not None
    model = build(name, 32, 1 if scratch else 3, **({"sample": GREY_SAMPLE} if scratch else {"image_size": 32}))
    x = tensor(images(4, 32, 1 if scratch else 3))
    expected = keras.ops.convert_to_numpy(model(x.float(), training=False))
    program = TorchProgram(model)
    assert program.keras_layers == []
    np.testing.assert_allclose(as_numpy(program(x)), expected, atol=1e-5)


@pytest.mark.parametrize("case", ["mobilenet_v3_small", "efficientnet_b0"])
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


def train_losses(model: keras.Model, config: RunConfig, batches: list, new_fit_at: int | None = None
                 ) -> list[float]:
    """The running loss after each batch's training step; ``new_fit_at``: before that batch, the
    train function is made again, as a second ``fit`` (a resumed run) makes it."""
    training.compile_model(model, config, steps_per_epoch=len(batches))
    assert training.uses_fast_path(model) is (config.jit is not False)
    model.make_train_function()
    step, losses = model.train_function, []
    for i, batch in enumerate(batches):
        if i == new_fit_at:
            model.make_train_function()
        step([tuple(tensor(a) for a in batch)])
        losses.append(float(model.metrics[0].result()))  # the running mean, read back every step
    return losses


def batches_of(size: int, channels: int, weighted: bool, steps: int = STEPS, n: int = 8) -> list[tuple]:
    rng = np.random.default_rng(1)
    batches = []
    for i in range(steps):
        x, y = images(n, size, channels, seed=i), np.eye(4, dtype="float32")[rng.integers(0, 4, n)]
        batches.append((x, y, rng.uniform(0.5, 2, n).astype("float32")) if weighted else (x, y))
    return batches


@pytest.mark.parametrize("optimizer,weighted", [("adamw", True), ("adam", False), ("sgd", True)])
def test_fast_steps_train_as_keras_train_step(optimizer, weighted, channels_last):
    """Same weights, same batches: the loss of each of STEPS steps, the weights, the batch-norm
    statistics and the optimizer's step count agree with Keras' own ``train_step`` (``--no-jit``)."""
    ours = build("cnn", 16, 1, sample=GREY_SAMPLE, dropout=0.0, head_dropout=0.0)  # no random masks
    theirs = twin(ours)
    batches = batches_of(16, 1, weighted)
    config = RunConfig("bench", "cnn", optimizer=optimizer, lr=1e-3, label_smoothing=0.1, weights="none")
    fast = train_losses(ours, config, batches)
    assert training.fast_steps(ours).program.channels_last is channels_last
    keras_losses = train_losses(theirs, RunConfig(**{**config.to_dict(), "jit": False}), batches)
    np.testing.assert_allclose(fast, keras_losses, rtol=LOSS_RTOL)
    assert fast[-1] != fast[0]  # it trained
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.path)
    assert int(ours.optimizer.iterations.numpy()) == int(theirs.optimizer.iterations.numpy()) == STEPS


class TracedGraph:
    """`CudaGraph`'s semantics on any device: ``make_fx`` records the step's tensor operations while
    it runs it once (so, unlike a CUDA graph, the capture is that step), and `replay` runs the record
    again on the same tensors with every host number the step read frozen into it, as a CUDA graph
    keeps its kernels' arguments. A step that reads a changing number on the host replays it stale.
    What a capture forbids fails here too: reading a value back to the host (``make_fx`` refuses
    ``.item()``) and making a tensor from host data (a copy from pageable memory on CUDA); unlike a
    failed CUDA capture, such a step has run (in part) by then, so the `captured` fixture fails the
    test on the fallback's warning rather than let the step run twice."""

    runs_on_capture = True

    def __init__(self, step: Callable[[], None], stream: None) -> None:
        from torch.fx.experimental.proxy_tensor import make_fx

        self.module = make_fx(step)()
        made = [n.name for n in self.module.graph.nodes if n.target is torch.ops.aten.lift_fresh_copy.default]
        if made:
            raise RuntimeError(f"the step makes tensors from host data: {made}")

    def replay(self) -> None:
        with torch.no_grad():  # the record holds the backward pass as operations of its own
            self.module()


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Training steps captured after one warm-up step of their batch shape: CUDA graphs on CUDA,
    `TracedGraph` elsewhere; a capture that fails (and falls back to eager steps) fails the test."""
    if DEVICE.type != "cuda":
        monkeypatch.setitem(FastSteps.GRAPHS, DEVICE.type, TracedGraph)
    monkeypatch.setattr(FastSteps, "GRAPH_AFTER", 1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="kerascnn: the training step runs eagerly")
        yield


@pytest.mark.parametrize("optimizer,weighted", [("adamw", True), ("adam", False)])
def test_captured_steps_train_as_keras_train_step(optimizer, weighted, channels_last, captured):
    """Replays of the captured step follow the one-cycle learning rate and the bias corrections from
    step to step as Keras' own steps do: same losses, weights, batch-norm statistics and step count.
    A smaller batch after the capture runs eagerly in between, and a new ``fit`` reads the step count
    back before its first replay."""
    ours = build("cnn", 16, 1, sample=GREY_SAMPLE, dropout=0.0, head_dropout=0.0)
    theirs = twin(ours)
    batches = batches_of(16, 1, weighted, steps=7)
    batches[3] = tuple(a[:5] for a in batches[3])
    config = RunConfig("bench", "cnn", optimizer=optimizer, lr=1e-3, weight_decay=1.0, label_smoothing=0.1,
                       weights="none")  # a decay of 1e-3 a step, which a stale learning rate would miss
    fast = train_losses(ours, config, batches, new_fit_at=5)
    steps = training.fast_steps(ours)
    assert steps.captured and steps._graph.key[0][0] == (8, 16, 16, 1)
    keras_losses = train_losses(theirs, RunConfig(**{**config.to_dict(), "jit": False}), batches)
    np.testing.assert_allclose(fast, keras_losses, rtol=LOSS_RTOL)
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.path)
    assert int(ours.optimizer.iterations.numpy()) == steps._adam.step == 7


def test_a_captured_step_draws_new_dropout_masks_at_each_replay(captured):
    """Dropout in a replayed step is not the mask of the capture: the same batch, replayed with the
    weights put back each time, gives a different loss."""
    model = build("cnn", 16, 1, sample=GREY_SAMPLE, dropout=0.5, head_dropout=0.5)
    training.compile_model(model, RunConfig("bench", "cnn", lr=1e-3, weights="none"), steps_per_epoch=4)
    model.make_train_function()
    batch = tuple(tensor(a) for a in batches_of(16, 1, False, steps=1)[0])
    start = [w.numpy() for w in model.weights]
    losses = []
    for _ in range(4):  # eager, capture, replay, replay
        model.set_weights(start)
        model.reset_metrics()
        model.train_function([batch])
        losses.append(float(model.metrics[0].result()))
    assert training.fast_steps(model).captured
    assert len(set(losses[1:])) == 3


def test_a_step_that_cannot_be_captured_runs_eagerly_with_a_warning(monkeypatch):
    """A failed capture leaves the step count alone and training goes on eagerly, as Keras trains."""
    class Uncapturable:
        def __init__(self, step, stream):
            raise RuntimeError("operation not permitted when stream is capturing\nmore")

    monkeypatch.setitem(FastSteps.GRAPHS, DEVICE.type, Uncapturable)
    monkeypatch.setattr(FastSteps, "GRAPH_AFTER", 1)
    ours = build("cnn", 16, 1, sample=GREY_SAMPLE, dropout=0.0, head_dropout=0.0)
    theirs = twin(ours)
    batches = batches_of(16, 1, False, steps=4)
    config = RunConfig("bench", "cnn", lr=1e-3, weights="none")
    with pytest.warns(UserWarning, match="runs eagerly.*RuntimeError: operation not permitted when stream is "
                                         "capturing\\)"):
        fast = train_losses(ours, config, batches)
    steps = training.fast_steps(ours)
    assert not steps.captured and int(ours.optimizer.iterations.numpy()) == steps._adam.step == 4
    np.testing.assert_allclose(fast, train_losses(theirs, RunConfig(**{**config.to_dict(), "jit": False}),
                                                  batches), rtol=LOSS_RTOL)
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.path)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step", "exponential"])
def test_schedule_value_is_the_keras_schedule(schedule):
    """The host-side learning rate of every schedule kerascnn builds equals Keras' own value at
    every step: warm-up, decay, the clamp after it and the staircase's boundaries."""
    config = RunConfig("bench", "cnn", lr=3e-3, epochs=4, lr_schedule="step" if schedule == "exponential" else schedule,
                       lr_step=1, lr_gamma=0.5)
    keras_schedule = training.learning_rate(config, steps_per_epoch=10)
    if schedule == "exponential":
        keras_schedule = keras.optimizers.schedules.ExponentialDecay(3e-3, decay_steps=7, decay_rate=0.9)
    for step in range(50):
        # Keras computes in float32: its cosine near the end of the decay is good to ~1e-6 of the peak LR
        expected = float(keras_schedule(step))
        assert schedule_value(keras_schedule, step) == pytest.approx(expected, rel=1e-6, abs=3e-3 * 1e-6), step


def test_schedule_value_leaves_other_learning_rates_to_keras():
    assert schedule_value(keras.optimizers.schedules.PiecewiseConstantDecay([5], [1e-3, 1e-4]), 3) is None
    assert schedule_value(keras.Variable(1e-3), 3) is None

    class Warmer(keras.optimizers.schedules.CosineDecay):  # a subclass may change the arithmetic
        pass

    assert schedule_value(Warmer(1e-3, 10), 3) is None


def test_adam_takes_a_tensor_learning_rate_as_a_number():
    """On a GPU a learning rate held in a variable (``--lr-schedule constant|plateau``) reaches the
    fused kernel as a tensor, to avoid a host synchronisation: it updates as the number does."""
    updated = []
    for on_gpu in (False, True):
        model = build("cnn", 16, 1, sample=GREY_SAMPLE, dropout=0.0, head_dropout=0.0)
        config = RunConfig("bench", "cnn", lr=1e-2, lr_schedule="constant", weights="none")
        training.compile_model(model, config, steps_per_epoch=2)
        adam = model.train_function.__self__._adam
        adam.cpu = not on_gpu  # what learning_rate() hands on an accelerator
        assert isinstance(adam.learning_rate(), torch.Tensor) is on_gpu
        grads = tuple(torch.full_like(v.value, 0.5) for v in model.trainable_variables)
        for _ in range(2):
            adam.apply(grads)
        updated.append([w.numpy() for w in model.trainable_weights])
    for a, b in zip(*updated):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_a_recompile_without_the_fast_steps_leaves_keras_own():
    model = build("cnn", 16, 1, sample=GREY_SAMPLE)
    config = RunConfig("bench", "cnn", weights="none")
    training.compile_model(model, config, steps_per_epoch=2)
    assert training.uses_fast_path(model)
    training.compile_model(model, RunConfig(**{**config.to_dict(), "jit": False}), steps_per_epoch=2)
    x, y = images(16, 16, 1), np.eye(4, dtype="float32")[np.arange(16) % 4]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not training.uses_fast_path(model)
    assert "make_train_function" not in vars(model) and "reset_metrics" not in vars(model)


def test_logs_read_back_every_few_steps_start_afresh_after_a_reset(monkeypatch):
    """As on CUDA (logs read back every 25 steps): the first step after Keras resets the metrics (a
    new epoch, an evaluation) reports that step's loss, not the last epoch's."""
    monkeypatch.setitem(FastSteps.SYNC_EVERY, "cpu", 25)
    model = build("cnn", 16, 1, sample=GREY_SAMPLE, dropout=0.0, head_dropout=0.0)
    training.compile_model(model, RunConfig("bench", "cnn", weights="none"), steps_per_epoch=4)
    assert training.fast_steps(model).sync_every == 25
    model.make_train_function()
    batches = [tuple(tensor(a) for a in batch) for batch in batches_of(16, 1, False, steps=4)]
    logs = [dict(model.train_function([batch])) for batch in batches[:3]]
    assert logs[0] == logs[2]  # between read-backs the logs stand still
    model.reset_metrics()
    after = model.train_function([batches[3]])
    assert after["loss"] == pytest.approx(float(model.metrics[0].result()), rel=1e-6) != logs[2]["loss"]


@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "captured"])
def test_a_fit_after_the_step_count_was_restored_uses_its_learning_rate(graphed, request):
    """A resume restores the optimizer's step count between fits: the next fit's learning rates
    follow it, as Keras' own steps do (the fast path keeps the count on the host), replays of a
    captured step included."""
    if graphed:
        request.getfixturevalue("captured")
    ours = build("cnn", 16, 1, sample=GREY_SAMPLE, dropout=0.0, head_dropout=0.0)
    theirs = twin(ours)
    x, y = images(16, 16, 1), np.eye(4, dtype="float32")[np.arange(16) % 4]
    config = RunConfig("bench", "cnn", lr=1e-2, epochs=20, label_smoothing=0.0, weights="none")
    for model, jit in ((ours, None), (theirs, False)):
        training.compile_model(model, RunConfig(**{**config.to_dict(), "jit": jit}), steps_per_epoch=2)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        model.optimizer.iterations.assign(25)  # the middle of the decay
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert training.uses_fast_path(ours) and not training.uses_fast_path(theirs)
    assert training.fast_steps(ours).captured is graphed
    assert int(ours.optimizer.iterations.numpy()) == int(theirs.optimizer.iterations.numpy()) == 27
    for a, b in zip(ours.weights, theirs.weights):  # with the count of the first fit kept: 2.8x apart
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-5, err_msg=a.path)


# bfloat16 keeps 8 bits of mantissa (float16 11): losses after STEPS steps of Keras' mixed-precision
# step and ours differ by up to MIXED_LOSS_RTOL (measured: 1.5e-3; the same weights and batches). Each
# weight's change over the STEPS steps differs by up to MIXED_UPDATE_RTOL of its norm (measured:
# 0.25 in bfloat16, 0.19 in float16, Adam scaling up rounding in small gradients); an unrelated
# update of the same size would differ by about 1.4.
MIXED_LOSS_RTOL = 1e-2
MIXED_UPDATE_RTOL = 0.5


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_fast_steps_in_mixed_precision_train_as_keras_train_step(policy, channels_last):
    """Under ``--precision mixed_bfloat16`` (what ``auto`` picks on a CPU with AMX) or
    ``mixed_float16`` the fast steps run the convolutions, matrix products and batch norms on
    lower-precision activations, as Keras' own mixed-precision step does, and train to the same
    losses and weight changes within its rounding."""
    low = getattr(torch, policy.split("_")[1])
    with models.dtype_policy(policy):
        ours = build("cnn", 16, 1, sample=GREY_SAMPLE, dropout=0.0, head_dropout=0.0)
        theirs = twin(ours)
        before = [w.numpy().copy() for w in ours.trainable_weights]
        config = RunConfig("bench", "cnn", optimizer="adamw", lr=1e-3, label_smoothing=0.1, weights="none",
                           precision=policy)
        batches = batches_of(16, 1, weighted=True, n=16)
        fast = train_losses(ours, config, batches)
        keras_losses = train_losses(theirs, RunConfig(**{**config.to_dict(), "jit": False}), batches)
    steps = ours.train_function.__self__
    assert steps.autocast is low
    with torch.autocast(DEVICE.type, dtype=low):  # the activations really are in the lower precision
        logits = steps.program(tensor(batches[0][0]), training=False, logits=True)
    assert logits.dtype == low
    np.testing.assert_allclose(fast, keras_losses, rtol=MIXED_LOSS_RTOL)
    assert fast[-1] != fast[0]  # it trained
    for a, b, w0 in zip(ours.trainable_weights, theirs.trainable_weights, before):
        assert a.dtype == b.dtype == "float32"  # float32 variables, lower-precision arithmetic
        ours_change, their_change = a.numpy() - w0, b.numpy() - w0
        assert np.linalg.norm(ours_change - their_change) <= MIXED_UPDATE_RTOL * np.linalg.norm(their_change), a.path


@pytest.mark.parametrize("case", ["resnet18", "mobilenet_v2", "mobilenet_v3_small"])
def test_fast_gradients_and_adam_update_match_keras_on_backbones(case):
    """One step on a backbone: the loss as Keras computes it, and every gradient as close to the
    exact (float64) gradient as Keras' own float32 computation is; then the lean AdamW update of
    Keras' gradients as Keras' own optimizer applies them (weights stored in torch's layout by the
    fast path).

    Comparing the two float32 gradients with each other does not work on every CPU: with batch
    norms over 1x1 and 2x2 maps (32x32 input, batch 16) Keras' own ResNet-18 gradients are 1.7e-2
    from the float64 ones on an AMD EPYC (the fast path's 1.5e-5), and both float32 paths are 0.16
    from them in MobileNetV2's block 12."""
    name, size, channels, options = CASES[case]
    ours = build(name, size, channels, **options)
    theirs = twin(ours)
    with models.dtype_policy("float64"):
        exact = build(name, size, channels, **options)
    exact.set_weights([w.astype("float64") for w in ours.get_weights()])
    config = RunConfig("bench", name, optimizer="adamw", lr=1e-3, label_smoothing=0.1, weights="none")
    for model, jit in ((ours, None), (theirs, False), (exact, False)):
        training.compile_model(model, RunConfig(**{**config.to_dict(), "jit": jit}), steps_per_epoch=1)
    x, y, w = (tensor(a) for a in batches_of(size, channels, True, steps=1, n=16)[0])
    fast = ours.train_function.__self__
    loss, _ = fast._forward(x, y, w, True)
    grads = torch.autograd.grad(loss, fast.params)
    keras_grads, exact_grads = [], []
    for model, dtype, out in ((theirs, torch.float32, keras_grads), (exact, torch.float64, exact_grads)):
        model_loss = model.compute_loss(x, y.to(dtype), model(x.to(dtype), training=True), w.to(dtype))
        out.extend(torch.autograd.grad(model_loss, [v.value for v in model.trainable_variables]))
        if model is theirs:
            assert float(loss.detach()) == pytest.approx(float(model_loss.detach()), rel=1e-5)
    scale = max(float(e.abs().max()) for e in exact_grads)
    for v, g, k, e in zip(theirs.trainable_variables, grads, keras_grads, exact_grads):
        # relative to the variable's own gradient, or to 1e-3 of the largest one for gradients that
        # vanish analytically (the shift of a batch norm that feeds another one in training mode)
        size_of = max(float(e.abs().max()), 1e-3 * scale)
        ours_err, keras_err = (float((t.double() - e).abs().max()) / size_of for t in (g, k))
        assert ours_err <= 1.5 * keras_err + 1e-4, (v.path, ours_err, keras_err)
    for a, b in zip(ours.non_trainable_weights, theirs.non_trainable_weights):  # batch-norm statistics
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.path)
    with torch.no_grad():
        fast._adam.apply(keras_grads)
        theirs.optimizer.apply(list(keras_grads), theirs.trainable_variables)
    for a, b in zip(ours.trainable_weights, theirs.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7, err_msg=a.path)


@pytest.mark.parametrize("case", ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"])
def test_channels_last_program_computes_the_nchw_program_forward_and_gradients(case):
    """CUDA's layout (channels-last feature maps) against NCHW, in training mode: outputs, batch-norm
    statistics and every gradient. In float64, so that no rounding hides a layout mistake: in float32
    torch's CPU kernels sum in another order for channels-last memory, and over batch norms on 1x1
    to 4x4 maps the two layouts' gradients differ by up to 30 times Keras' own float32 error."""
    name, size, channels, options = CASES[case]
    with models.dtype_policy("float64"):
        nchw = build(name, size, channels, **options)
        for layer in all_layers(nchw):  # each run would draw its own masks
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0
        last = twin(nchw)
    x = tensor(images(16, size, channels)).double()
    direction = torch.from_numpy(np.random.default_rng(2).normal(size=(16, 4))).to(DEVICE)
    outputs, gradients = [], []
    for model, channels_last in ((nchw, False), (last, True)):
        program = TorchProgram(model, channels_last=channels_last)
        assert program.keras_layers == []
        logits = program(x, training=True, logits=True)
        assert logits.dtype == torch.float64
        outputs.append(as_numpy(logits))
        gradients.append(torch.autograd.grad((logits * direction).sum(), [v.value for v in model.trainable_variables]))
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-10, atol=1e-12)
    scale = max(float(g.abs().max()) for g in gradients[0])
    for v, g_last, g_nchw in zip(nchw.trainable_variables, *gradients):
        np.testing.assert_allclose(as_numpy(g_last), as_numpy(g_nchw), rtol=1e-8, atol=1e-10 * scale, err_msg=v.path)
    for a, b in zip(nchw.non_trainable_weights, last.non_trainable_weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-10, atol=1e-12, err_msg=a.path)


@pytest.mark.slow
def test_fit_evaluate_predict_and_save_through_the_fast_path(tmp_path):
    model = build("resnet18", 32, 3, image_size=32)
    x, y = images(16, 32, 3), np.eye(4, dtype="float32")[np.arange(16) % 4]
    training.compile_model(model, RunConfig("bench", "resnet18", weights="none", epochs=2), steps_per_epoch=2)
    assert training.uses_fast_path(model)
    history = model.fit(x, y, batch_size=8, epochs=2, validation_data=(x, y), verbose=0)
    assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    reference = twin(model)
    reference.compile(loss=keras.losses.CategoricalCrossentropy(), metrics=[keras.metrics.CategoricalAccuracy(
        name="accuracy")])
    got, expected = model.evaluate(x, y, verbose=0, return_dict=True), reference.evaluate(x, y, verbose=0,
                                                                                           return_dict=True)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert got["accuracy"] == pytest.approx(expected["accuracy"])
    proba = model.predict(x, verbose=0)
    np.testing.assert_allclose(proba, reference.predict(x, verbose=0), atol=1e-5)
    save_model(model, tmp_path / "model.keras", {"class_names": list("abcd")})
    loaded, _ = load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), proba, atol=1e-5)


def test_no_jit_keeps_keras_own_steps():
    model = build("cnn", 16, 1, sample=GREY_SAMPLE)
    training.compile_model(model, RunConfig("bench", "cnn", jit=False), steps_per_epoch=1)
    assert not training.uses_fast_path(model)


def test_cpu_training_keeps_freed_memory_on_linux():
    import sys

    from kerascnn.distribute import keep_freed_memory

    assert keep_freed_memory() is sys.platform.startswith("linux")
