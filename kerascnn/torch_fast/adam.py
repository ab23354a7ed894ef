"""`LeanAdam`: Keras' Adam/AdamW update as torch's fused kernel, with the learning rate of a known
schedule computed on the host (`schedule_value`)."""

from __future__ import annotations

import math

import keras
import torch

from kerascnn import keras_compat

from .program import Tensor, Unsupported


def schedule_value(schedule: object, step: int) -> float | None:
    """``schedule(step)`` in Python arithmetic for the Keras schedules kerascnn builds (`CosineDecay`,
    with or without warm-up, and `ExponentialDecay`; Keras' formulas, clamps included), None for any
    other. Keras evaluates a schedule with a dozen tensor operations per step, on the host about as
    long as a small model's whole step on a GPU (`benchmarks/framework_tax.py --batch-size 2`)."""
    schedules = keras.optimizers.schedules
    if type(schedule) is schedules.ExponentialDecay:
        p = step / schedule.decay_steps
        return schedule.initial_learning_rate * schedule.decay_rate ** (math.floor(p) if schedule.staircase else p)
    if type(schedule) is not schedules.CosineDecay:
        return None
    start, decay_steps, warmup_steps = schedule.initial_learning_rate, schedule.decay_steps, 0
    if schedule.warmup_target is not None:
        warmup_steps = schedule.warmup_steps
        step = min(step, decay_steps + warmup_steps)
        if step < warmup_steps:
            return (schedule.warmup_target - start) * (step / warmup_steps) + start
        start = schedule.warmup_target
    fraction = min(step - warmup_steps, decay_steps) / decay_steps
    return start * ((1 - schedule.alpha) * 0.5 * (1 + math.cos(math.pi * fraction)) + schedule.alpha)


class LeanAdam:
    """Keras' Adam/AdamW update as torch's fused Adam kernel (one pass over memory, on CPU and CUDA)
    instead of Keras' dozen element-wise operations per variable.

    Exactly Keras' arithmetic (up to float rounding): decoupled weight decay ``p *= 1 - wd * lr``
    on the variables Keras decays, ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``, then ``iterations += 1``; the
    state lives in the Keras optimizer's own variables (stored in the layout of their weights).
    The step count ``t`` is also kept on the host (`step`, read from ``iterations`` once per ``fit``
    by `FastSteps.make_train_function`), so the learning rate of a schedule `schedule_value` knows
    is a Python number: no tensor work for it and no host synchronisation.
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer, variables: list[keras.Variable]) -> None:
        if not optimizer.built:
            optimizer.build(variables)
        self.optimizer = optimizer
        params = [v.value for v in variables]
        momentum_variables, velocity_variables = keras_compat.adam_slots(optimizer, variables)
        momentums, velocities = [m.value for m in momentum_variables], [v.value for v in velocity_variables]
        with torch.no_grad():
            for p, m, v in zip(params, momentums, velocities):
                if m.stride() != p.stride():  # the weight's layout (see `relayout`)
                    m.data, v.data = torch.empty_like(p).copy_(m), torch.empty_like(p).copy_(v)
        # Flat views in each weight's memory order: element-wise updates on contiguous vectors.
        self.orders = [sorted(range(p.dim()), key=lambda d, p=p: -p.stride(d)) for p in params]
        if not all(p.permute(*o).is_contiguous() for p, o in zip(params, self.orders)):
            raise Unsupported("weights with overlapping or gapped memory")
        self.params, self.momentums, self.velocities = ([_flat(x, o) for x, o in zip(xs, self.orders)]
                                                        for xs in (params, momentums, velocities))
        self.decayed = [keras_compat.decays_weight(optimizer, v) for v in variables]
        device = self.params[0].device if self.params else torch.device("cpu")
        self.cpu = device.type == "cpu"
        self.step: int | None = None  # ``iterations`` on the host; None: read it at the next update
        self._t = torch.zeros((), dtype=torch.float32, device=device)  # t, for the kernel
        # a captured step's per-step numbers (`next_graphed_step`): the step size and the decay factor
        self._alpha = torch.zeros((), dtype=torch.float32, device=device)
        self._decay_factor = torch.ones((), dtype=torch.float32, device=device)

    @classmethod
    def for_optimizer(cls, optimizer: keras.optimizers.Optimizer, variables: list[keras.Variable]) -> LeanAdam | None:
        """A `LeanAdam` for a plain Keras Adam or AdamW, None for anything it would not reproduce."""
        plain = isinstance(optimizer, keras.optimizers.Adam) and type(optimizer).__module__.startswith("keras.")
        extras = (optimizer.amsgrad if plain else True, optimizer.clipnorm, optimizer.clipvalue,
                  optimizer.global_clipnorm, optimizer.use_ema, optimizer.gradient_accumulation_steps)
        if not plain or any(extras) or not variables:
            return None
        try:
            return cls(optimizer, variables)
        except Unsupported:
            return None

    def learning_rate(self) -> float | Tensor:
        """This step's learning rate: a Python number where it is one without a host
        synchronisation (a known schedule, or any LR on the CPU), else Keras' tensor."""
        opt = self.optimizer
        lr = schedule_value(keras_compat.learning_rate_setting(opt), self.step)
        if lr is None:
            lr = keras_compat.current_learning_rate(opt)  # a tensor, or the optimizer's LR variable
            lr = float(lr) if self.cpu else getattr(lr, "value", lr)
        return lr

    def _next_step(self) -> tuple[int, float | Tensor]:
        """The step number ``t`` about to be taken (counted on the host from now on) and its learning rate."""
        if self.step is None:
            self.step = int(self.optimizer.iterations.value)
        lr = self.learning_rate()
        self.step += 1
        return self.step, lr

    def _selected(self, grads: tuple[Tensor | None, ...]) -> tuple[list[Tensor], ...]:
        """The flat parameters, moments, velocities and gradients of the variables that have a
        gradient, and those of the parameters to decay."""
        kept = [i for i, g in enumerate(grads) if g is not None]
        params, momentums, velocities = ([xs[i] for i in kept] for xs in (self.params, self.momentums,
                                                                           self.velocities))
        flat = [_flat(grads[i], self.orders[i]) for i in kept]
        return params, momentums, velocities, flat, [self.params[i] for i in kept if self.decayed[i]]

    @torch.no_grad()
    def apply(self, grads: tuple[Tensor | None, ...]) -> None:
        opt = self.optimizer
        t, lr = self._next_step()
        params, momentums, velocities, grads, decayed = self._selected(grads)
        if decayed:
            torch._foreach_mul_(decayed, 1 - opt.weight_decay * lr)
        # torch's kernel divides by sqrt(v) / sqrt(1 - b2^t) + eps where Keras divides by sqrt(v) + eps
        # and scales the step by sqrt(1 - b2^t): the same arithmetic with eps / sqrt(1 - b2^t)
        self._t.fill_(t)
        torch._fused_adam_(params, grads, momentums, velocities, [], [self._t] * len(params), lr=lr,
                           beta1=opt.beta_1, beta2=opt.beta_2, weight_decay=0.0,
                           eps=opt.epsilon / math.sqrt(1 - opt.beta_2 ** t), amsgrad=False, maximize=False)
        opt.iterations.value.add_(1)

    def next_graphed_step(self) -> None:
        """Before a replay of a captured step (`graphed_apply`): write this step's numbers where the
        capture reads them. A captured step keeps every host number it was captured with, so what
        changes from step to step (the learning rate, the bias corrections) lives in device tensors,
        set here by kernel arguments: no host synchronisation."""
        opt = self.optimizer
        t, lr = self._next_step()
        self._alpha.fill_(lr * (math.sqrt(1 - opt.beta_2 ** t) / (1 - opt.beta_1 ** t)))
        self._decay_factor.fill_(1 - (opt.weight_decay or 0.0) * lr)

    @torch.no_grad()
    def graphed_apply(self, grads: tuple[Tensor | None, ...]) -> None:
        """`apply`'s update for a captured step, Keras' arithmetic as written (``p -= alpha m /
        (sqrt(v) + eps)``) in element-wise operations over the whole list: torch's fused kernel takes
        eps as a host number, and Keras' arithmetic through it needs eps / sqrt(1 - b2^t), which
        changes every step. Inside a CUDA graph the extra kernels cost no launches."""
        opt = self.optimizer
        params, momentums, velocities, grads, decayed = self._selected(grads)
        if decayed:
            torch._foreach_mul_(decayed, self._decay_factor)
        torch._foreach_lerp_(momentums, grads, 1 - opt.beta_1)
        torch._foreach_mul_(velocities, opt.beta_2)
        torch._foreach_addcmul_(velocities, grads, grads, value=1 - opt.beta_2)
        denominators = torch._foreach_sqrt(velocities)
        torch._foreach_add_(denominators, opt.epsilon)
        updates = torch._foreach_div(momentums, denominators)
        torch._foreach_mul_(updates, self._alpha)
        torch._foreach_sub_(params, updates)
        opt.iterations.value.add_(1)


def _flat(x: Tensor, order: list[int]) -> Tensor:
    """``x`` as a vector in the memory order ``order`` (a view when ``x`` is laid out that way)."""
    return x.permute(*order).reshape(-1)
