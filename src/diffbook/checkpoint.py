"""Save a trained NNX model to a file and load it back into a fresh one.

The file holds the model's variables (parameters, and any batch statistics) as
nested dictionaries of arrays, serialised with msgpack.  To restore, build a
model of the same architecture first (its initial weights are overwritten)::

    checkpoint.save("checkpoints/vae.msgpack", model)
    fresh = VAE(16, 128, rngs=nnx.Rngs(0))
    checkpoint.restore("checkpoints/vae.msgpack", fresh)

Random-number-generator state (``nnx.RngState``) is not saved.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import nnx, serialization

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
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        loaded = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:
        raise ValueError(f"{str(path)!r} is not a readable checkpoint: {err}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{str(path)!r} is not a checkpoint of an NNX model")
    state = nnx.state(model, _FILTER)
    want, got = _describe(nnx.to_pure_dict(state)), _describe(loaded)
    if want != got:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        shapes = sorted(f"{k}: file {got[k]} vs model {want[k]}"
                        for k in set(want) & set(got) if want[k] != got[k])
        raise ValueError(f"checkpoint {str(path)!r} does not match the model: "
                         f"missing {missing[:3]}, unexpected {extra[:3]}, shapes {shapes[:3]}")
    nnx.replace_by_pure_dict(state, loaded)
    nnx.update(model, state)
    return model
