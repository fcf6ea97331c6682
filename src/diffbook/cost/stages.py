"""What one training run or one batch of network calls costs, by XLA's cost analysis.

The tools behind :func:`~diffbook.cost.chapters.estimate`, independent of the book's
chapters: :func:`abstract` makes a model as shapes only (``nnx.eval_shape``: no
weights), :func:`train_stage` lowers one optimiser step as
:func:`diffbook.train.fit` runs it and :func:`call_stage` one network call
(``jax.jit(f).lower(...)``: no compiling), and each returns a :class:`Stage`, XLA's
count of FLOPs per step or call times how many the run makes.  A training stage also
carries what a step holds in memory (:meth:`Stage.memory_bytes`): the activations
that the backward pass reads (the residuals of the loss's ``jax.vjp``, which the
lowered step returns for their shapes) plus the parameters, one set of gradients, the
optimiser's state and the moving average.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import checks


@dataclass(frozen=True)
class Stage:
    """One part of a chapter's computation: a training run, or the calls of a network.

    Attributes:
      name: what the chapter does, in words.
      kind: ``"train"`` (``calls`` optimiser steps) or ``"sample"`` (``calls``
        network calls).
      batch: examples per step or per call (for a guided call, the samples; the
        network sees them twice, with and without their condition).
      calls: optimiser steps or network calls.
      flops_per_call: XLA's count of floating-point operations of one step or call.
      activation_bytes: for training, the bytes of the activations kept for the
        backward pass at the whole batch; 0 for sampling.
      state_bytes: for training, the bytes of the parameters, gradients, optimiser
        state and moving average; 0 for sampling.
    """

    name: str
    kind: str
    batch: int
    calls: int
    flops_per_call: float
    activation_bytes: float = 0.0
    state_bytes: float = 0.0

    @property
    def flops(self) -> float:
        """All the stage's floating-point operations."""
        return self.flops_per_call * self.calls

    def memory_bytes(self, devices: int = 1) -> float:
        """Bytes a training step holds on each of ``devices`` that share its batch.

        Args:
          devices: devices the batch is split among (8 on a TPU v2-8).

        Returns:
          ``activation_bytes / devices + state_bytes``; 0 for a sampling stage.

        Raises:
          TypeError, ValueError: if ``devices`` is not a positive int.
        """
        devices = checks.positive_int(devices, "devices")
        return self.activation_bytes / devices + self.state_bytes


def _nbytes(tree) -> float:
    return float(sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree)))


def lowered_flops(fn: Callable, *args) -> float:
    """XLA's count of the floating-point operations of ``jax.jit(fn)(*args)``, without compiling.

    Args:
      fn: a function JAX can trace.
      *args: its arguments, arrays or ``jax.ShapeDtypeStruct`` (shapes are enough).

    Returns:
      The ``"flops"`` of the lowered program's cost analysis.  A loop's body
      (``lax.scan``, ``while``) is counted once, whatever its trip count: lower one
      step, not a sampler.

    Raises:
      TypeError: if ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    return _flops(jax.jit(fn).lower(*args))


def _flops(lowered) -> float:
    analysis = lowered.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
        analysis = analysis[0]
    return float(analysis["flops"])


def abstract(make: Callable):
    """``make()``'s NNX modules as shapes only: ``nnx.eval_shape(make)``, no weights made.

    Args:
      make: ``make() -> model`` (a module, or a pytree of modules).

    Returns:
      The same structure with ``jax.ShapeDtypeStruct`` in place of every array.

    Raises:
      TypeError: if ``make`` is not callable.
    """
    if not callable(make):
        raise TypeError(f"make must be callable, got {type(make).__name__}")
    return nnx.eval_shape(make)


def train_stage(
    name: str,
    model,
    optimizer,
    loss_fn: Callable,
    batch,
    *,
    steps: int,
    ema_decay: float | None = None,
) -> Stage:
    """The cost of a training run: ``steps`` optimiser steps as :func:`~diffbook.train.fit` runs.

    The step lowered is ``fit``'s: the loss and its gradient, the optimiser's update
    and, with ``ema_decay``, the moving average of the parameters.

    Args:
      name: the run, in words.
      model: the NNX model, made by :func:`abstract` (or a real one).
      optimizer: its ``nnx.Optimizer``, e.g. ``abstract(lambda: train.adamw_with_ema(...)[1])``.
      loss_fn: ``loss_fn(model, batch, key) -> scalar``, as ``fit`` takes it.
      batch: one batch, a pytree of ``jax.ShapeDtypeStruct`` (or arrays) whose
        leading axis is the batch size.
      steps: optimiser steps of the run.
      ema_decay: the moving average's decay, or ``None`` for a run without one.

    Returns:
      A ``"train"`` :class:`Stage`.

    Raises:
      TypeError, ValueError: for a bad ``steps`` or ``batch``, or a ``model`` or
        ``optimizer`` that is no NNX object.
    """
    steps = checks.positive_int(steps, "steps")
    leaves = jax.tree.leaves(batch)
    if not leaves or any(np.ndim(leaf) < 1 for leaf in leaves):
        raise ValueError("batch must be a pytree of arrays with a leading batch axis")
    if not isinstance(model, nnx.Module) or not isinstance(optimizer, nnx.Optimizer):
        raise TypeError(
            f"model must be an nnx.Module and optimizer an nnx.Optimizer, got "
            f"{type(model).__name__} and {type(optimizer).__name__}"
        )
    ema = nnx.clone(model) if ema_decay is not None else None
    graphdef, state = nnx.split((model, optimizer, ema))

    def step(state, batch, key):
        model, optimizer, ema = nnx.merge(graphdef, state)
        # nnx.value_and_grad(loss_fn), written with jax.vjp to return the residuals.
        model_def, params, rest = nnx.split(model, nnx.Param, ...)
        loss_of = lambda p: loss_fn(nnx.merge(model_def, p, rest), batch, key)
        loss, backward = jax.vjp(loss_of, params)
        (grads,) = backward(jnp.ones_like(loss))
        optimizer.update(model, grads)
        if ema is not None:
            new = jax.tree.map(
                lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                nnx.state(ema, nnx.Param),
                nnx.state(model, nnx.Param),
            )
            nnx.update(ema, new)
        # The residuals, what the backward pass reads, are an output only for their shapes.
        return nnx.state((model, optimizer, ema)), loss, backward

    lowered = jax.jit(step).lower(state, batch, jax.random.key(0))
    return Stage(
        name,
        "train",
        int(leaves[0].shape[0]),
        steps,
        _flops(lowered),
        activation_bytes=_nbytes(lowered.out_info[2]),
        # Parameters, optimiser state and moving average as held, plus one set of gradients.
        state_bytes=_nbytes(state) + _nbytes(nnx.state(model, nnx.Param)),
    )


def call_stage(name: str, model, fn: Callable, inputs: tuple, *, calls: int) -> Stage:
    """The cost of ``calls`` calls of a trained network, e.g. a sampler's steps.

    Args:
      name: what the calls are for, in words.
      model: the network, made by :func:`abstract` (or a real one); any pytree of NNX
        modules, e.g. a tuple of a network and a classifier.
      fn: ``fn(model, *inputs)``, one call.
      inputs: its other arguments, ``jax.ShapeDtypeStruct`` or arrays; the first one's
        leading axis is the batch.
      calls: how many times the chapter makes the call.

    Returns:
      A ``"sample"`` :class:`Stage`.

    Raises:
      TypeError, ValueError: for a bad ``calls`` or ``inputs``.
    """
    calls = checks.positive_int(calls, "calls")
    if not isinstance(inputs, tuple) or not inputs or np.ndim(inputs[0]) < 1:
        raise TypeError("inputs must be a non-empty tuple whose first entry has a batch axis")
    graphdef, state = nnx.split(model)
    flops = lowered_flops(lambda s, *xs: fn(nnx.merge(graphdef, s), *xs), state, *inputs)
    return Stage(name, "sample", int(inputs[0].shape[0]), calls, flops)
