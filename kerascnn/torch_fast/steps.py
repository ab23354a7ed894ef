"""`FastSteps`: train, test and predict functions for a compiled Keras model on `TorchProgram`, the
training step captured as a CUDA graph on CUDA, and `install`, which checks that it understands this
Keras before it gives a model those steps."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

import keras
import torch

from kerascnn import keras_compat
from kerascnn.distribute import keep_freed_memory

from .adam import LeanAdam
from .program import Tensor, TorchProgram, Unsupported

EPSILON = 1e-7  # keras.backend.epsilon(): Keras' cross-entropy clips probabilities to [eps, 1 - eps]


def categorical_crossentropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0,
                             sample_weight: Tensor | None = None) -> Tensor:
    """Keras' `CategoricalCrossentropy` on ``softmax(logits)``: probabilities clipped to
    [1e-7, 1 - 1e-7], smoothed one-hot ``targets``, sample weights summed over the batch size."""
    log_p = torch.log_softmax(logits.float(), dim=-1).clamp(math.log(EPSILON), math.log1p(-EPSILON))
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / targets.shape[-1]
    per_sample = -(targets * log_p).sum(-1)
    if sample_weight is not None:
        per_sample = per_sample * sample_weight
    return per_sample.sum() / per_sample.shape[0]


class StepGraph(Protocol):
    """A training step captured once (constructed from the step, a function of no arguments, and the
    stream to capture on) and replayed on the same tensors; ``runs_on_capture``: capturing also ran it."""

    runs_on_capture: bool

    def replay(self) -> None: ...


class CudaGraph:
    """``step`` (a function of no arguments) captured as a CUDA graph on ``stream``: `replay` launches
    its kernels again, on the same memory, with the host numbers they were captured with. Capturing
    runs nothing."""

    runs_on_capture = False

    def __init__(self, step: Callable[[], None], stream: torch.cuda.Stream | None) -> None:
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the input pipeline's threads may use the GPU meanwhile (augmentation)
        with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
            step()

    def replay(self) -> None:
        self.graph.replay()


class CapturedStep(NamedTuple):
    """The captured training step: the batch shapes it takes, the graph and the inputs it reads."""

    key: tuple
    graph: StepGraph
    inputs: list[Tensor | None]


class FastSteps:
    """Train, test and predict functions for a compiled Keras ``model`` on top of `TorchProgram`.

    They update the same Keras objects as Keras' own steps (weights, batch-norm statistics, the
    optimizer and its iteration count, the loss tracker and accuracy metric), so callbacks, history
    and saving are unchanged. On CUDA the logs handed to callbacks are read back every
    ``sync_every`` steps instead of every step, and at the first step after the metrics are reset
    (the epoch's logs are always exact); set ``sync_every`` to 1 where each batch's loss counts.

    On CUDA, with a plain Adam or AdamW (`LeanAdam`), no Keras layer left in the program and
    without ``jit``, the training step of the first batch shape to have run `GRAPH_AFTER` times is
    captured as a CUDA graph and replayed for every later batch of that shape; other shapes run
    eagerly, and so does a step that cannot be captured, with a warning (docs/design/fast-path.md).
    """

    SYNC_EVERY = {"cuda": 25}  # by device type; 1 elsewhere
    CHANNELS_LAST = {"cuda": True}  # by device type: the memory layout of feature maps (NCHW elsewhere)
    GRAPHS: dict[str, type[StepGraph]] = {"cuda": CudaGraph}  # by device type: what captures the step (else eager)
    GRAPH_AFTER = 3  # eager steps of a batch shape before it is captured (CUDA graphs want a warm-up)

    def __init__(self, model: keras.Model, *, jit: bool = False, sync_every: int | None = None) -> None:
        loss = model.loss
        if not isinstance(loss, keras.losses.CategoricalCrossentropy) or loss.from_logits:
            raise Unsupported("the loss must be CategoricalCrossentropy on probabilities")
        if model.losses:
            raise Unsupported("models with regularisation losses")
        self.model = model
        self.variables = list(model.trainable_variables)
        self.params = [v.value for v in self.variables]
        self.device = next(iter(self.params or [w.value for w in model.weights])).device
        self.program = TorchProgram(model, channels_last=self.CHANNELS_LAST.get(self.device.type, False))
        if not self.program.softmax_output:
            raise Unsupported("the model must end in a softmax activation")
        self.label_smoothing = float(loss.label_smoothing or 0.0)
        compute = keras.backend.standardize_dtype(model.dtype_policy.compute_dtype)
        self.autocast = getattr(torch, compute) if compute in ("bfloat16", "float16") else None
        self.sync_every = sync_every or self.SYNC_EVERY.get(self.device.type, 1)
        self._forward = torch.compile(self._forward_loss) if jit else self._forward_loss
        self._adam = LeanAdam.for_optimizer(model.optimizer, self.variables)
        graph = self.GRAPHS.get(self.device.type)
        # Keras layers in the program copy constants to the device and read seeds on the host
        capturable = self._adam is not None and not jit and not self.program.keras_layers
        self._graph_class = graph if capturable else None
        self._graph: CapturedStep | None = None
        self._warmups: dict[tuple, int] = {}  # by batch key, before the capture
        self._stream = torch.cuda.Stream(self.device) if self._graph_class and self.device.type == "cuda" else None
        self._logs: dict[str, Any] = {}
        self._steps = 0
        self._tracked: tuple[keras.metrics.Metric, keras.metrics.Metric] | None = None

    def _metrics(self, batch) -> tuple[keras.metrics.Metric, keras.metrics.Metric]:
        """The loss tracker and accuracy metric, built from a data ``batch`` as ``fit`` would (once)."""
        if self._tracked is None:
            keras_compat.build_metrics(self.model, batch)
            metrics = [m for metric in self.model.metrics for m in getattr(metric, "metrics", [metric])]
            tracker = keras_compat.loss_tracker(self.model)
            accuracy = [m for m in metrics if type(m) is keras.metrics.CategoricalAccuracy]
            if len(metrics) != 2 or len(accuracy) != 1 or tracker not in metrics:
                raise Unsupported("metrics other than the loss and accuracy")
            self._tracked = (tracker, accuracy[0])
        return self._tracked

    def check(self, tolerance: float | None = None) -> None:
        """Build the metrics and run a probe batch through the program and through Keras: `KerasMismatch`
        if their outputs differ by more than ``tolerance`` (default: 1e-4, or 2e-2 in 16-bit precision)."""
        shape = tuple(self.model.inputs[0].shape)
        classes = self.model.outputs[0].shape[-1]
        if None in shape[1:] or classes is None:
            raise Unsupported("inputs or outputs of unknown size")
        generator = torch.Generator().manual_seed(0)
        x = (torch.rand((2, *shape[1:]), generator=generator) * 255).to(self.device)
        y = torch.eye(classes, device=self.device)[torch.tensor([0, classes - 1])]
        self._metrics((x, y))
        with torch.no_grad():
            with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                ours = self.program(x, training=False).float()  # as training computes it
            theirs = keras.ops.convert_to_tensor(self.model(x, training=False)).float()
            difference = float((ours - theirs).abs().max())
        tolerance = tolerance or (2e-2 if self.autocast is not None else 1e-4)
        if not difference <= tolerance:
            raise keras_compat.KerasMismatch(f"its forward pass differs from Keras' by {difference:.2g} on a probe "
                                             f"batch (tolerance {tolerance:g})")

    def _batch(self, data) -> tuple[Tensor, Tensor, Tensor | None]:
        batch = data[0]
        x, y, weights = (tuple(batch) + (None,))[:3] if isinstance(batch, (tuple, list)) else (batch, None, None)
        to = lambda t: None if t is None else torch.as_tensor(t).to(self.device, non_blocking=True)  # noqa: E731
        y = to(y)
        return to(x), y.float() if y is not None else None, None if weights is None else to(weights).float()

    def _forward_loss(self, x: Tensor, y: Tensor, weights: Tensor | None, training: bool) -> tuple[Tensor, Tensor]:
        # a captured step must cast the weights it reads afresh at every replay: no cast cache
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None,
                            cache_enabled=self._graph_class is None):
            logits = self.program(x, training=training, logits=True)
        return categorical_crossentropy(logits, y, self.label_smoothing, weights), logits.float()

    @torch.no_grad()
    def _accumulate(self, loss: Tensor, logits: Tensor, y: Tensor, weights: Tensor | None) -> None:
        """Add a batch to the loss tracker's and the accuracy's sums (device work only)."""
        tracker, accuracy = self._tracked
        n = y.shape[0]
        tracker.total.value.add_(loss.detach() * n)
        tracker.count.value.add_(n)
        correct = (logits.argmax(-1) == y.argmax(-1)).float()
        if weights is None:
            accuracy.total.value.add_(correct.sum())
            accuracy.count.value.add_(n)
        else:
            accuracy.total.value.add_((correct * weights).sum())
            accuracy.count.value.add_(weights.sum())

    def _read_logs(self) -> dict[str, Any]:
        """The logs after a step: read back from the device every `sync_every` steps."""
        tracker, accuracy = self._tracked
        self._steps += 1
        if self._steps % self.sync_every == 0 or not self._logs:
            logs = {"loss": tracker.total.value / tracker.count.value,
                    "accuracy": accuracy.total.value / accuracy.count.value}
            self._logs = logs if self.sync_every == 1 else {k: float(v) for k, v in logs.items()}
        return self._logs

    def make_train_function(self, force: bool = False) -> Callable:
        """Keras' ``fit`` calls this as it starts (`install` puts it on the model): the optimizer's
        step count is read afresh at the first update, since a resume may have restored it. After
        a recompile without the fast steps it takes itself off the model and leaves Keras' own."""
        if self.model.train_function != self.train_function:
            del self.model.make_train_function, self.model.reset_metrics
        elif self._adam is not None:
            self._adam.step = None
        return type(self.model).make_train_function(self.model, force)

    def reset_metrics(self) -> None:
        """Keras' ``reset_metrics`` (each epoch and evaluation starts with it; `install` puts this on
        the model): the next step's logs are read back, not the ones of the metrics just reset."""
        self._logs = {}
        type(self.model).reset_metrics(self.model)

    def train_function(self, data) -> dict[str, Any]:
        self._metrics(data[0])
        x, y, weights = self._batch(data)
        if self._graph_class is None or not self._through_graph(x, y, weights):
            self._step(x, y, weights)
        return self._read_logs()

    @property
    def captured(self) -> bool:
        """Whether training steps replay a captured graph."""
        return self._graph is not None

    def _step(self, x: Tensor, y: Tensor, weights: Tensor | None, graphed: bool = False) -> None:
        """One training step: forward, gradients, the optimizer's update, the metrics' sums.
        ``graphed``: the code a graph captures (`LeanAdam.graphed_apply`)."""
        loss, logits = self._forward(x, y, weights, True)
        optimizer = self.model.optimizer
        grads = torch.autograd.grad(optimizer.scale_loss(loss), self.params, allow_unused=True)
        with torch.no_grad():
            if graphed:
                self._adam.graphed_apply(grads)
            elif self._adam is not None:
                self._adam.apply(grads)
            else:
                optimizer.apply(list(grads), self.variables)
        self._accumulate(loss, logits, y, weights)

    def _through_graph(self, x: Tensor, y: Tensor, weights: Tensor | None) -> bool:
        """Run this step through the captured graph; False: run it eagerly. A batch shape's first
        `GRAPH_AFTER` steps warm up on the capture's stream, the last of them through the very code
        the graph captures; the next one is captured (then replayed, if capturing ran nothing)."""
        key = tuple((tuple(t.shape), t.dtype) if t is not None else None for t in (x, y, weights))
        if self._graph is not None:
            if key != self._graph.key:
                return False
            for static, batch in zip(self._graph.inputs, (x, y, weights)):
                if static is not None:
                    static.copy_(batch, non_blocking=True)
            self._adam.next_graphed_step()
            self._graph.graph.replay()
            return True
        warmups = self._warmups[key] = self._warmups.get(key, 0) + 1
        if warmups <= self.GRAPH_AFTER:
            last = warmups == self.GRAPH_AFTER
            if last:
                self._adam.next_graphed_step()
            with self._capture_stream():
                self._step(x, y, weights, graphed=last)
            return True
        inputs = [None if t is None else t.clone() for t in (x, y, weights)]
        saved_step = self._adam.step
        self._adam.next_graphed_step()
        if self._stream is not None:
            torch.cuda.synchronize(self.device)  # an earlier step's error surfaces here, not as the capture's
        try:
            with torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext():
                graph = self._graph_class(lambda: self._step(*inputs, graphed=True), self._stream)
        except Exception as exc:  # noqa: BLE001 - whatever stops the capture, the eager step still works
            self._adam.step, self._graph_class = saved_step, None
            causes = [exc] + ([exc.__context__] if exc.__context__ is not None else [])
            why = "; after ".join(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}" for e in causes)
            warnings.warn(f"kerascnn: the training step runs eagerly, it could not be captured as a graph ({why})",
                          stacklevel=1)  # raised deep inside Keras' fit: no caller's line would say more
            return False
        self._graph = CapturedStep(key, graph, inputs)
        if not graph.runs_on_capture:
            graph.replay()
        return True

    @contextlib.contextmanager
    def _capture_stream(self) -> Iterator[None]:
        """Work inside runs on the capture's stream (CUDA), ordered after and before the current one's."""
        if self._stream is None:
            yield
            return
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        try:
            with torch.cuda.stream(self._stream):
                yield
        finally:
            current.wait_stream(self._stream)

    @torch.no_grad()
    def test_function(self, data) -> dict[str, Any]:
        self._metrics(data[0])
        x, y, weights = self._batch(data)
        loss, logits = self._forward(x, y, weights, False)
        self._accumulate(loss, logits, y, weights)
        return self._read_logs()

    @torch.no_grad()
    def predict_function(self, data) -> Tensor:
        x, _, _ = self._batch(data)
        return self.program(x, training=False)


class FastPath(NamedTuple):
    """Whether a compiled model trains through `FastSteps` (``steps``), and if not, why (``reason``)."""

    steps: FastSteps | None
    reason: str | None

    @property
    def used(self) -> bool:
        return self.steps is not None

    def record(self) -> dict[str, Any]:
        """What ``config.json`` and the report say of it."""
        return {"used": self.used, "reason": self.reason, "keras": keras.version()}


def install(model: keras.Model, *, jit: bool = False) -> FastPath:
    """Give the compiled ``model`` the fast train/test/predict functions once `FastSteps.check` has
    passed on this Keras. Keras' own steps stay when the model or its compile settings are outside
    what `FastSteps` reproduces (quietly), or with one warning when this Keras is outside
    `keras_compat.FAST_PATH_KERAS`, lacks a name the fast path reads, or computes otherwise."""
    reason = keras_compat.version_mismatch()
    try:
        if reason is None:
            steps = FastSteps(model, jit=jit)
            steps.check()
    except Unsupported as exc:
        return FastPath(None, f"the model is outside what the fast path reproduces: {exc}")
    except Exception as exc:  # noqa: BLE001 - whatever this Keras does differently, Keras' own step works
        reason = f"{type(exc).__name__}: {exc}"
    if reason is not None:
        warnings.warn(f"kerascnn: training with Keras' own step, not the fast path, on Keras {keras.version()}: "
                      f"{reason}", stacklevel=2)
        return FastPath(None, reason)
    if steps.device.type == "cpu":
        keep_freed_memory()
    model.train_function = steps.train_function
    model.make_train_function = steps.make_train_function
    model.reset_metrics = steps.reset_metrics
    model.test_function = steps.test_function
    if steps.autocast is None:  # in mixed precision Keras' own predict matches a reloaded model.keras
        model.predict_function = steps.predict_function
    return FastPath(steps, None)
