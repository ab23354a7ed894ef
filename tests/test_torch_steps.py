"""The fast torch steps (`kerascnn.torch_fast.FastSteps`) train as Keras' own ``train_step`` does: eager,
captured, in mixed precision, with each schedule."""

from __future__ import annotations

import keras
import numpy as np
import pytest

if keras.backend.backend() != "torch":
    pytest.skip("the fast path is the torch backend's", allow_module_level=True)

import torch  # noqa: E402
from run_configs import decided  # noqa: E402
from torch_fast_support import (  # noqa: E402
    CASES,
    DEVICE,
    GREY_SAMPLE,
    LOSS_RTOL,
    STEPS,
    as_numpy,
    build,
    images,
    tensor,
    twin,
)

from kerascnn import models, training  # noqa: E402
from kerascnn.config import RunConfig  # noqa: E402
from kerascnn.saving import all_layers  # noqa: E402
from kerascnn.torch_fast import FastSteps, TorchProgram, schedule_value  # noqa: E402


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
    config = decided("bench", "cnn", optimizer=optimizer, lr=1e-3, label_smoothing=0.1, weights="none")
    fast = train_losses(ours, config, batches)
    assert training.fast_steps(ours).program.channels_last is channels_last
    keras_losses = train_losses(theirs, RunConfig(**{**config.to_dict(), "jit": False}), batches)
    np.testing.assert_allclose(fast, keras_losses, rtol=LOSS_RTOL)
    assert fast[-1] != fast[0]  # it trained
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.path)
    assert int(ours.optimizer.iterations.numpy()) == int(theirs.optimizer.iterations.numpy()) == STEPS


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
    config = decided("bench", "cnn", optimizer=optimizer, lr=1e-3, weight_decay=1.0, label_smoothing=0.1,
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
    training.compile_model(model, decided("bench", "cnn", lr=1e-3, weights="none"), steps_per_epoch=4)
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
    config = decided("bench", "cnn", lr=1e-3, weights="none")
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
    config = decided("bench", "cnn", lr=3e-3, epochs=4, lr_schedule="step" if schedule == "exponential" else schedule,
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
        config = decided("bench", "cnn", lr=1e-2, lr_schedule="constant", weights="none")
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
    config = decided("bench", "cnn", weights="none")
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
    training.compile_model(model, decided("bench", "cnn", weights="none"), steps_per_epoch=4)
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
    config = decided("bench", "cnn", lr=1e-2, epochs=20, label_smoothing=0.0, weights="none")
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
        config = decided("bench", "cnn", optimizer="adamw", lr=1e-3, label_smoothing=0.1, weights="none",
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


# the MobileNets in the slow tier (3 s each); their operations' forward passes stay in the fast tier's CASES
MOBILENETS = [pytest.param(name, marks=pytest.mark.slow) for name in ("mobilenet_v2", "mobilenet_v3_small")]


@pytest.mark.parametrize("case", ["resnet18", *MOBILENETS])
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
    config = decided("bench", name, optimizer="adamw", lr=1e-3, label_smoothing=0.1, weights="none")
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


@pytest.mark.parametrize("case", ["resnet18", *MOBILENETS, pytest.param("efficientnet_b0", marks=pytest.mark.slow)])
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
