"""A data-parallel training loop for any NNX model and any loss.

The batch is sharded over every device along a mesh axis called ``"data"``;
parameters and optimiser state are replicated.  XLA inserts the all-reduce of
the gradients.  The same code runs on one CPU, on 8 virtual CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) and on a TPU slice.

Each optimiser step is one compiled call, dispatched asynchronously; the loss
is fetched (and checked for NaN) every ``check_every`` steps.  We measured that
fusing many steps into one ``lax.scan`` is *slower* on XLA's CPU backend: the
gradients of convolutions inside a loop body ran about 12 times slower than the
same step called from Python (see the flow-matching chapter's closing notes).

Sampling and evaluation split their batches the same way: :func:`shard_batch` puts a
batch's leading axis on the ``"data"`` axis, and the library's samplers
(:mod:`diffbook.samplers`, :mod:`diffbook.guidance`) call it on ``x_T`` and on the
carry of their loops, so after ``fit`` (which leaves the weights replicated) each
device denoises its own slice of the samples.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import checks
from .checkpoint import TrainingCheckpoints


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), ("data",))


def replicate(tree, mesh: Mesh):
    """Put every array of ``tree`` on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(x, mesh: Mesh | None = None):
    """Split the leading (batch) axis of ``x`` over the ``"data"`` axis of ``mesh``.

    What :func:`fit` does to its training batches, for sampling and evaluation: each
    device then runs the network on its own slice of the batch, with the weights
    replicated (as ``fit`` leaves them).  It works both ways a batch is met:

    * inside ``jax.jit`` (or ``nnx.jit``, ``lax.scan``, a diffrax solve), on traced
      values, it is ``jax.lax.with_sharding_constraint``;
    * on concrete arrays it is ``jax.device_put``.

    The values never change, only where they live; random numbers drawn for a
    sharded array (``jax.random.normal(key, x.shape)``) are the same as for an
    unsharded one, since JAX's default threefry is partitionable.

    On a mesh whose ``"data"`` axis has one device, ``x`` is returned unchanged (the
    same object), so one-device programs are exactly what they were without it.

    A batch whose size B does not divide by the ``"data"`` axis's size is
    *replicated* instead: every device holds (and computes on) all of it, as
    without this function, so such a batch gains no speed, but its values are the
    same.  Padding it to a multiple would change the shapes that a sampler's
    batch-wide figures (the corrector's mean norms, an adaptive ODE solver's error
    norm) are taken over, and an uneven split inside ``jit`` lets XLA choose
    shardings of the inputs that JAX cannot describe (an ``IndivisibleError``).
    Pick batch sizes that divide by the device count (8 on a TPU v2-8) to use
    every device.

    Args:
      x: an array of shape (B, ...), or a pytree of such arrays (a batch and its
        labels, say), concrete or traced; B may differ between leaves.
      mesh: a mesh with an axis named ``"data"`` (default :func:`data_mesh`, all
        devices).  Arrays that the same computation uses must live on its devices:
        the replicated weights of a model trained by ``fit`` with this mesh, or
        arrays not committed to any device.

    Returns:
      ``x`` itself on a one-device mesh; otherwise a pytree of ``x``'s structure
      whose arrays (same shapes, dtypes and values) are split along axis 0 over
      ``"data"`` (sharding ``NamedSharding(mesh, P("data"))``), or replicated
      (``NamedSharding(mesh, P())``) where B does not divide by its size.

    Raises:
      TypeError: if ``mesh`` is not a ``jax.sharding.Mesh``.
      ValueError: if ``mesh`` has no ``"data"`` axis, ``x`` holds no array, or an
        array of ``x`` has no leading axis (a scalar).
    """
    mesh = data_mesh() if mesh is None else mesh
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if "data" not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named 'data', got axes {mesh.axis_names}")
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise ValueError("x must be an array or a pytree holding at least one array")
    for leaf in leaves:
        if jnp.ndim(leaf) < 1:
            raise ValueError(
                f"x must hold batches of shape (B, ...), got an array of shape {jnp.shape(leaf)}"
            )
    n = mesh.shape["data"]
    if n == 1:
        return x
    split, whole = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

    def place(a):
        sharding = split if a.shape[0] % n == 0 else whole
        if isinstance(a, jax.core.Tracer):
            return jax.lax.with_sharding_constraint(a, sharding)
        return jax.device_put(a, sharding)

    return jax.tree.map(place, x)


def global_batch_size(batch_size: int, mesh: Mesh) -> int:
    """``batch_size`` rounded up to a multiple of the device count (so every device gets a slice).

    Raises:
      TypeError, ValueError: if ``batch_size`` is not a positive int.
    """
    batch_size = checks.positive_int(batch_size, "batch_size")
    n = mesh.devices.size
    return -(-batch_size // n) * n


def warmup_cosine(peak_lr: float, steps: int, warmup: int, *, final_fraction: float = 0.01):
    """Linear warm-up from 0 to ``peak_lr`` for ``warmup`` steps, then cosine decay to
    ``final_fraction * peak_lr`` at ``steps``.

    Args:
      peak_lr: the largest learning rate, > 0.
      steps: optimiser steps of the whole run, >= 1.
      warmup: steps of the linear warm-up, ``0 <= warmup < steps``.
      final_fraction: the last learning rate as a fraction of ``peak_lr``, >= 0.

    Returns:
      An ``optax`` schedule: step -> learning rate.

    Raises:
      TypeError, ValueError: for an argument outside those ranges (named in the message).
    """
    steps = checks.positive_int(steps, "steps")
    warmup = checks.positive_int(warmup, "warmup", minimum=0)
    if warmup >= steps:
        raise ValueError(f"warmup must be less than steps, got warmup={warmup}, steps={steps}")
    peak_lr = checks.finite_number(peak_lr, "peak_lr", minimum=0, strictly=True)
    final_fraction = checks.finite_number(final_fraction, "final_fraction", minimum=0)
    return optax.warmup_cosine_decay_schedule(
        0.0, peak_lr, warmup, steps, end_value=final_fraction * peak_lr
    )


def adamw_with_ema(
    model: nnx.Module,
    *,
    peak_lr: float,
    steps: int,
    warmup: int,
    clip: float = 1.0,
    weight_decay: float = 1e-4,
):
    """The book's usual optimiser for ``model``, and a copy of it for the moving average.

    AdamW with the learning rate of :func:`warmup_cosine` and gradients clipped to
    global norm ``clip``.  For a chapter's digit U-Net::

        model = nets.unet_from_recipe(cfg, seed=0)
        ema, optimizer = train.adamw_with_ema(model, peak_lr=cfg.peak_lr,
                                              steps=cfg.steps, warmup=cfg.warmup)

    Args:
      model: the NNX model to train.
      peak_lr, steps, warmup: the learning-rate schedule, as in :func:`warmup_cosine`.
      clip: the largest global norm of the gradients, > 0.
      weight_decay: AdamW's decoupled weight decay, >= 0.

    Returns:
      ``(ema, optimizer)``: a copy of ``model`` (pass it to :func:`fit` as ``ema``)
      and an ``nnx.Optimizer`` over ``model``'s ``nnx.Param`` variables.

    Raises:
      TypeError, ValueError: for an argument outside those ranges (named in the message).
    """
    clip = checks.finite_number(clip, "clip", minimum=0, strictly=True)
    weight_decay = checks.finite_number(weight_decay, "weight_decay", minimum=0)
    tx = optax.chain(
        optax.clip_by_global_norm(clip),
        optax.adamw(warmup_cosine(peak_lr, steps, warmup), weight_decay=weight_decay),
    )
    return nnx.clone(model), nnx.Optimizer(model, tx, wrt=nnx.Param)


def progress_enabled() -> bool:
    """Progress bars are on unless ``DIFFBOOK_PROGRESS=0`` (set when notebooks are
    executed for the book and by the tests, so stored outputs stay clean)."""
    return os.environ.get("DIFFBOOK_PROGRESS", "1") != "0"


@dataclass
class History:
    """What :func:`fit` returns: the loss of every step and timings in seconds."""

    loss: np.ndarray
    compile_s: float
    train_s: float
    steps: int
    batch_size: int
    devices: int
    extras: dict = field(default_factory=dict)


def fit(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    loss_fn: Callable,
    data,
    *,
    steps: int,
    batch_size: int,
    key: jax.Array,
    check_every: int = 50,
    ema: nnx.Module | None = None,
    ema_decay: float = 0.999,
    ema_warmup: bool = False,
    mesh: Mesh | None = None,
    progress: bool | None = None,
    desc: str = "training",
    checkpoint_dir=None,
    checkpoint_every: int = 1000,
    stop_after: int | None = None,
) -> History:
    """Train ``model`` in place on random batches of ``data``.

    Args:
      model: the NNX model; updated in place.
      optimizer: ``nnx.Optimizer(model, tx, wrt=nnx.Param)``; updated in place.
      loss_fn: ``loss_fn(model, batch, key) -> scalar``, with ``batch`` a pytree of
        arrays of the same structure as ``data`` whose leading axis is the batch.
      data: array (or pytree of arrays with equal leading size) of training examples.
        It is replicated on every device; batches are drawn on the devices.
      steps: optimiser steps.
      batch_size: examples per step, over all devices (rounded up to a multiple of
        the device count).
      key: ``jax.random`` key for the batches and ``loss_fn``.
      check_every: fetch the losses (and check them for NaN) this often.
      ema: optional copy of ``model`` that tracks an exponential moving average of
        its parameters with ``ema_decay``; sample from it for smoother results.
      ema_warmup: if true, the update after ``n`` optimiser steps (``n = 0, 1, ...``)
        uses the decay ``min(ema_decay, (1 + n) / (10 + n))``, as TensorFlow's
        ``ExponentialMovingAverage`` does with ``num_updates``: the average then
        forgets the random initial weights within a few steps, where a fixed decay
        of 0.999 still holds ``0.999**1000``, about 37%, of them after 1,000 steps.
        ``n`` is the step number, so a resumed run stays exact.  Off by default.
      mesh: device mesh (default :func:`data_mesh`).
      progress: show a tqdm bar; default :func:`progress_enabled`.
      checkpoint_dir: if given, save the model, optimiser and EMA state with Orbax
        every ``checkpoint_every`` steps and at the end, and *resume* from the
        latest checkpoint found there.  Batches and loss keys are derived from
        ``key`` and the step number, so a resumed run ends exactly where an
        uninterrupted one would.  :func:`diffbook.checkpoint.restore_training`
        loads the trained model (and EMA) from this folder without training;
        :func:`diffbook.config.checkpoint_dir` gives the folder a chapter uses when
        ``DIFFBOOK_CHECKPOINTS`` is set.
      checkpoint_every: save every this many steps (with ``checkpoint_dir``).
      stop_after: return after this many steps of this call (the run is then
        unfinished; call again with the same ``checkpoint_dir`` to go on). For
        sessions with a time limit, such as Colab.

    Returns a :class:`History` whose ``loss`` covers every step done so far,
    including those of earlier, resumed-from calls.

    Raises:
      FloatingPointError: the loss became NaN or infinite (with the step).
    """
    steps = checks.positive_int(steps, "steps")
    check_every = checks.positive_int(check_every, "check_every")
    checkpoint_every = checks.positive_int(checkpoint_every, "checkpoint_every")
    stop_after = checks.positive_int(stop_after, "stop_after", allow_none=True)
    if stop_after is not None and checkpoint_dir is None:
        raise ValueError("stop_after needs a checkpoint_dir to resume from")
    ema_decay = checks.finite_number(ema_decay, "ema_decay", minimum=0.0)
    if ema_decay >= 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    leaves = jax.tree.leaves(data)
    if not leaves or any(leaf.shape[0] != leaves[0].shape[0] for leaf in leaves):
        raise ValueError("data must be an array or pytree of arrays with one common leading size")
    n_data = leaves[0].shape[0]
    mesh = data_mesh() if mesh is None else mesh
    batch_size = global_batch_size(batch_size, mesh)
    batch_sharding = NamedSharding(mesh, P("data"))

    graphdef, state = nnx.split((model, optimizer, ema))
    # Private copies: the step donates its input, and a model and its EMA may
    # start out sharing the same arrays.
    state = replicate(jax.tree.map(jnp.copy, state), mesh)
    data = replicate(jax.tree.map(jnp.asarray, data), mesh)

    def one_step(state, step_key, step):
        # `step`: the number of optimiser steps done before this one (for ema_warmup).
        model, optimizer, ema = nnx.merge(graphdef, state)
        k_batch, k_loss = jax.random.split(step_key)
        idx = jax.random.randint(k_batch, (batch_size,), 0, n_data)
        # Gather on every device, then keep only this device's slice of the batch.
        batch = jax.lax.with_sharding_constraint(
            jax.tree.map(lambda a: a[idx], data), batch_sharding
        )
        loss, grads = nnx.value_and_grad(loss_fn)(model, batch, k_loss)
        optimizer.update(model, grads)
        if ema is not None:
            decay = ema_decay
            if ema_warmup:
                n = step.astype(jnp.float32)
                decay = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
            new = jax.tree.map(
                lambda e, p: decay * e + (1.0 - decay) * p,
                nnx.state(ema, nnx.Param),
                nnx.state(model, nnx.Param),
            )
            nnx.update(ema, new)
        return nnx.state((model, optimizer, ema)), loss

    train_step = jax.jit(one_step, donate_argnums=0)

    show = progress_enabled() if progress is None else progress
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, leave=False)
    keys = jax.random.split(key, steps)
    losses, pending = [], []
    start, run = 0, None
    if checkpoint_dir is not None:
        run = TrainingCheckpoints(checkpoint_dir)
        start = run.latest_step()
        if start > steps:
            raise ValueError(
                f"the checkpoint in {checkpoint_dir} is at step {start}, past steps={steps}"
            )
        if start:
            state, done = run.restore(start, state)
            state = replicate(state, mesh)
            losses.append(done)
            if bar is not None:
                bar.update(start)
    end = steps if stop_after is None else min(steps, start + stop_after)
    # A finished run loaded from its checkpoint needs no compiled step at all.
    t0 = time.perf_counter()
    compiled = train_step.lower(state, keys[0], np.int32(0)).compile() if start < end else None
    compile_s = time.perf_counter() - t0 if start < end else 0.0

    def check(upto: int):
        # Fetching the pending losses waits for the device: do it only now and then.
        chunk = np.asarray(jax.device_get(pending))
        pending.clear()
        if not np.all(np.isfinite(chunk)):
            bad = upto - len(chunk) + int(np.argmin(np.isfinite(chunk)))
            raise FloatingPointError(
                f"loss became {chunk[bad - upto + len(chunk)]} at step {bad}: training stopped. "
                "Lower the learning rate, clip gradients, or check the data for NaNs."
            )
        losses.append(chunk)
        if bar is not None:
            bar.update(len(chunk))
            bar.set_postfix(loss=f"{chunk.mean():.4f}")

    t0 = time.perf_counter()
    try:
        for i in range(start, end):
            state, loss = compiled(state, keys[i], np.int32(i))
            pending.append(loss)
            save = run is not None and ((i + 1) % checkpoint_every == 0 or i == end - 1)
            if len(pending) == check_every or i == end - 1 or save:
                check(i + 1)
            if save:
                run.save(i + 1, state, np.concatenate(losses))
        if run is not None:
            run.wait()
    finally:
        if bar is not None:
            bar.close()
        # The step donates its input buffers: hand the newest state back to the
        # Python objects even when training stops early.
        nnx.update((model, optimizer, ema), state)
    train_s = time.perf_counter() - t0
    return History(
        loss=np.concatenate(losses),
        compile_s=compile_s,
        train_s=train_s,
        steps=int(end),
        batch_size=batch_size,
        devices=mesh.devices.size,
    )
