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
    for a, b in zip(
        jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(fresh)), strict=True
    ):
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


def _tiny_run(directory, steps=6):
    """A few steps of train.fit on a small MLP with batch norm, checkpointed into ``directory``."""
    from diffbook import mixture, train

    model = mixture.MixtureMLP(16, 1, norm="batch", rngs=nnx.Rngs(0))
    ema, optimizer = train.adamw_with_ema(model, peak_lr=1e-2, steps=steps, warmup=1)
    x = mixture.standardise(mixture.MIXTURE.sample(jax.random.key(0), 64))
    loss_fn = lambda m, x, k: jnp.mean((m(x, jax.random.uniform(k, x.shape[:1])) - x) ** 2)
    train.fit(
        model,
        optimizer,
        loss_fn,
        x,
        steps=steps,
        batch_size=16,
        key=jax.random.key(1),
        ema=ema,
        ema_decay=0.5,
        checkpoint_dir=directory,
        checkpoint_every=4,
        progress=False,
    )
    return model, ema


def _fresh(seed, width=16):
    from diffbook import mixture

    return mixture.MixtureMLP(width, 1, norm="batch", rngs=nnx.Rngs(seed))


def _params(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_restore_training_loads_what_fit_saved(tmp_path):
    model, ema = _tiny_run(tmp_path / "run")
    fresh, fresh_ema = _fresh(1), _fresh(2)
    # The trained weights differ from fresh ones, and the EMA from the weights.
    assert not np.array_equal(_params(fresh)[0], _params(model)[0])
    assert not all(np.array_equal(a, b) for a, b in zip(_params(model), _params(ema), strict=True))
    assert checkpoint.restore_training(tmp_path / "run", fresh, fresh_ema) == 6
    # Every variable, the batch-norm statistics included, exactly as trained.
    for trained, loaded in ((model, fresh), (ema, fresh_ema)):
        for a, b in zip(
            jax.tree.leaves(nnx.state(trained)), jax.tree.leaves(nnx.state(loaded)), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    # An older checkpoint that fit kept (every 4 steps, and the last two).
    other = _fresh(1)
    assert checkpoint.restore_training(tmp_path / "run", other, step=4) == 4
    assert not np.array_equal(_params(other)[0], _params(fresh)[0])
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 5.*\[4, 6\]"):
        checkpoint.restore_training(tmp_path / "run", other, step=5)
    # A model of another architecture: the differences are named.
    with pytest.raises(ValueError, match="does not match the model.*shapes"):
        checkpoint.restore_training(tmp_path / "run", _fresh(0, width=8))
    # The one-file restore points to restore_training for a folder.
    with pytest.raises(IsADirectoryError, match="restore_training"):
        checkpoint.restore(tmp_path / "run", fresh)


def test_restore_training_errors(tmp_path):
    model = _fresh(0)
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        checkpoint.restore_training(tmp_path / "missing", model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint of train.fit"):
        checkpoint.restore_training(tmp_path / "empty", model)
    with pytest.raises(TypeError, match="model"):
        checkpoint.restore_training(tmp_path / "empty", object())
    with pytest.raises(ValueError, match="step"):
        checkpoint.restore_training(tmp_path / "empty", model, step=0)
    # A run trained without a moving average has none to load.
    from diffbook import train

    run = tmp_path / "no_ema"
    trained = _fresh(0)
    _, optimizer = train.adamw_with_ema(trained, peak_lr=1e-2, steps=2, warmup=0)
    train.fit(
        trained,
        optimizer,
        lambda m, x, k: jnp.mean(m(x, jnp.zeros(x.shape[:1])) ** 2),
        jnp.ones((8, 1)),
        steps=2,
        batch_size=4,
        key=jax.random.key(0),
        checkpoint_dir=run,
        progress=False,
    )
    with pytest.raises(ValueError, match="kept no moving average"):
        checkpoint.restore_training(run, _fresh(1), _fresh(2))
    assert checkpoint.restore_training(run, model) == 2
