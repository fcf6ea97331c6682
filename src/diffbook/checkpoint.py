"""Saving and loading models: one file per model, and the training runs of ``train.fit``.

Two kinds of checkpoint, one module:

* :func:`save` and :func:`restore`: one model's variables (parameters, and any
  batch statistics) in one file, as nested dictionaries of arrays serialised
  with msgpack.  To restore, build a model of the same architecture first (its
  initial weights are overwritten)::

      checkpoint.save("checkpoints/vae.msgpack", model)
      fresh = VAE(16, 128, rngs=nnx.Rngs(0))
      checkpoint.restore("checkpoints/vae.msgpack", fresh)

* :func:`restore_training`: the model (and its moving average) from the folder
  that ``train.fit(..., checkpoint_dir=folder)`` writes, an Orbax checkpoint of
  the whole training state (model, optimiser, EMA and losses) that ``fit`` also
  resumes from (through :class:`TrainingCheckpoints`).  This is how a reader loads
  a run trained elsewhere, for example on a GPU::

      model = nets.unet_from_recipe(cfg)
      ema = nnx.clone(model)
      checkpoint.restore_training("checkpoints/ddpm", model, ema)

Random-number-generator state (``nnx.RngState``) is never restored.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import nnx, serialization

from . import checks

_FILTER = nnx.Not(nnx.RngState)


def _as_path(path, name: str = "path") -> Path:
    if not isinstance(path, (str, Path)):
        raise TypeError(f"{name} must be a str or pathlib.Path, got {type(path).__name__}")
    return Path(path)


def _check_model(model):
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}")


def save(path, model: nnx.Module) -> Path:
    """Write ``model``'s variables to ``path`` (parent folders are created); returns the path."""
    path = _as_path(path)
    _check_model(model)
    tree = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, _FILTER)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(serialization.msgpack_serialize(tree))
    return path


def _describe(tree, prefix=""):
    """{'a/b/kernel': shape} for every array of a nested dict."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_describe(v, name + "/"))
        else:
            out[name] = tuple(np.shape(v))
    return out


def restore(path, model: nnx.Module) -> nnx.Module:
    """Load the variables saved at ``path`` into ``model`` (in place) and return it.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: the file is not a checkpoint, or its variables differ from the
        model's in names or shapes (the message lists the first differences).
    """
    path = _as_path(path)
    _check_model(model)
    if path.is_dir():
        raise IsADirectoryError(
            f"{str(path)!r} is a folder: for the checkpoints that train.fit "
            "writes there, use checkpoint.restore_training"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        loaded = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:
        raise ValueError(f"{str(path)!r} is not a readable checkpoint: {err}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{str(path)!r} is not a checkpoint of an NNX model")
    _load_into(model, loaded, f"checkpoint {str(path)!r}")
    return model


def _load_into(model: nnx.Module, loaded: dict, what: str, ignore=()) -> None:
    """Overwrite ``model``'s variables (but its RNG state) with the nested dict ``loaded``.

    Names in ``ignore`` may be in ``loaded`` without being loaded (the RNG state that
    a training checkpoint holds)."""
    state = nnx.state(model, _FILTER)
    want, got = _describe(nnx.to_pure_dict(state)), _describe(loaded)
    got = {k: v for k, v in got.items() if k in want or k not in ignore}
    if want != got:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        shapes = sorted(
            f"{k}: file {got[k]} vs model {want[k]}"
            for k in set(want) & set(got)
            if want[k] != got[k]
        )
        raise ValueError(
            f"{what} does not match the model: "
            f"missing {missing[:3]}, unexpected {extra[:3]}, shapes {shapes[:3]}"
        )
    nnx.replace_by_pure_dict(state, _only(loaded, set(want)))
    nnx.update(model, state)


def _only(tree: dict, names: set, prefix: str = "") -> dict:
    """The part of the nested dict ``tree`` whose leaves are named in ``names``."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            sub = _only(v, names, name + "/")
            if sub:
                out[k] = sub
        elif name in names:
            out[k] = v
    return out


# Training runs: the Orbax checkpoints of train.fit.


def _ocp():
    # Imported on first use: Orbax takes about a second to import, and only runs
    # with a checkpoint folder need it.
    import orbax.checkpoint as ocp

    return ocp


class TrainingCheckpoints:
    """The checkpoints of one training run in a folder; what ``train.fit`` saves with.

    Each checkpoint is the step number and ``{"state": state, "loss": losses}``, where
    ``state`` is ``nnx.state((model, optimizer, ema))`` and ``losses`` (shape
    ``(step,)``) the loss of every step so far.  The two newest are kept.

    Args:
      directory: the folder (created if missing).

    Raises:
      TypeError: if ``directory`` is not a str or ``pathlib.Path``.
    """

    def __init__(self, directory):
        ocp = _ocp()
        self.directory = _as_path(directory, "checkpoint_dir").resolve()
        options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
        )

    def latest_step(self) -> int:
        """The step of the newest checkpoint, or 0 if there is none."""
        return self._manager.latest_step() or 0

    def all_steps(self) -> list[int]:
        """The steps of the checkpoints kept, in increasing order."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, loss: np.ndarray) -> None:
        """Save the training ``state`` (a pytree of arrays) and ``loss`` (shape ``(step,)``)."""
        self._manager.save(step, args=_ocp().args.StandardSave({"state": state, "loss": loss}))

    def restore(self, step: int, like):
        """The state and losses saved at ``step``.

        Args:
          step: a step that :meth:`save` was called with.
          like: a pytree of arrays of the saved state's structure, shapes and dtypes;
            the restored arrays get its shardings.

        Returns:
          ``(state, loss)``: a pytree like ``like``, and the losses, shape ``(step,)``.
        """
        ocp = _ocp()
        abstract = {
            "state": jax.tree.map(ocp.utils.to_shape_dtype_struct, like),
            "loss": jax.ShapeDtypeStruct((step,), np.float32),
        }
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return restored["state"], np.asarray(restored["loss"])

    def restore_saved(self, step: int) -> dict:
        """Everything saved at ``step`` as nested dicts of arrays on one device, keyed as
        saved (with no model at hand to give the structure)."""
        metadata = self._manager.item_metadata(step)
        tree = getattr(metadata, "tree", metadata)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree
        )
        return self._manager.restore(step, args=_ocp().args.StandardRestore(abstract))

    def wait(self) -> None:
        """Return once every save has reached the disk."""
        self._manager.wait_until_finished()


def _unwrap(tree):
    """Saved NNX variables, ``{"value": array}``, as their arrays (the pure-dict layout)."""
    if isinstance(tree, dict):
        if set(tree) == {"value"} and not isinstance(tree["value"], dict):
            return np.asarray(tree["value"])
        return {k: _unwrap(v) for k, v in tree.items()}
    return tree


def restore_training(
    directory, model: nnx.Module, ema: nnx.Module | None = None, *, step: int | None = None
) -> int:
    """Load a run of ``train.fit(..., checkpoint_dir=directory)`` into ``model`` (and ``ema``).

    Build the model as the run did (same architecture; its initial weights do not
    matter) and, to get the moving average too, a second copy for ``ema``.  The
    optimiser state is not loaded: to *continue* a run, call ``train.fit`` again with
    the same ``checkpoint_dir``, which resumes on its own.

    Args:
      directory: the run's ``checkpoint_dir``.
      model: the model to overwrite in place with the trained weights.
      ema: if given, overwritten in place with the run's moving average of the weights.
      step: which checkpoint (default: the newest; ``fit`` keeps the two newest).

    Returns:
      The step of the loaded checkpoint: the number of optimiser steps it had done.

    Raises:
      TypeError: if ``directory`` is not a path or a model is not an ``nnx.Module``.
      FileNotFoundError: if ``directory`` holds no checkpoint (or none at ``step``).
      ValueError: if the saved variables differ from the model's in names or shapes,
        or if ``ema`` is given and the run kept no moving average.
    """
    path = _as_path(directory, "directory")
    _check_model(model)
    if ema is not None:
        _check_model(ema)
    step = checks.positive_int(step, "step", allow_none=True)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {str(path)!r}")
    run = TrainingCheckpoints(path)
    steps = run.all_steps()
    if not steps:
        raise FileNotFoundError(f"{str(path)!r} holds no checkpoint of train.fit")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise FileNotFoundError(
            f"{str(path)!r} has no checkpoint at step {step}; it has steps {steps}"
        )
    saved = _unwrap(run.restore_saved(step)["state"])
    # fit saves nnx.state((model, optimizer, ema)): keys "0", "1" and "2".
    rng_names = set(_describe(nnx.to_pure_dict(nnx.state(model, nnx.RngState))))
    _load_into(model, saved.get("0", {}), f"the model saved in {str(path)!r}", rng_names)
    if ema is not None:
        if not saved.get("2"):
            raise ValueError(f"the run in {str(path)!r} kept no moving average (fit had ema=None)")
        _load_into(ema, saved["2"], f"the moving average saved in {str(path)!r}", rng_names)
    return step
