import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffbook import checkpoint, vae


def test_round_trip_gives_the_same_model(tmp_path):
    model = vae.VAE(4, 16, rngs=nnx.Rngs(0))
    path = checkpoint.save(tmp_path / "sub" / "vae.msgpack", model)
    assert path.is_file()
    fresh = vae.VAE(4, 16, rngs=nnx.Rngs(1))
    x = jnp.linspace(-1, 1, 2 * 64).reshape(2, 8, 8, 1)
    assert not np.allclose(fresh(x, jax.random.key(0))[0], model(x, jax.random.key(0))[0])
    assert checkpoint.restore(path, fresh) is fresh
    np.testing.assert_array_equal(fresh(x, jax.random.key(0))[0], model(x, jax.random.key(0))[0])
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(fresh))):
        np.testing.assert_array_equal(a, b)


def test_restore_errors(tmp_path):
    model = vae.VAE(4, 16, rngs=nnx.Rngs(0))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.restore(tmp_path / "missing.msgpack", model)
    path = checkpoint.save(tmp_path / "vae.msgpack", model)
    with pytest.raises(ValueError, match="does not match the model.*shapes"):
        checkpoint.restore(path, vae.VAE(8, 16, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="does not match the model.*missing"):
        checkpoint.restore(path, nnx.Linear(64, 4, rngs=nnx.Rngs(0)))
    junk = tmp_path / "junk.msgpack"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint"):
        checkpoint.restore(junk, model)
    with pytest.raises(TypeError, match="model"):
        checkpoint.save(tmp_path / "x", object())
    with pytest.raises(TypeError, match="path"):
        checkpoint.save(3, model)
