"""The EMA warm-up of ``train.fit`` (opt-in) and the mixture recipe that turns it on."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from diffbook import train


class Jumper(nnx.Module):
    """One parameter vector, initially all ones."""

    def __init__(self):
        self.w = nnx.Param(jnp.ones((3,)))


def to_zero(model, batch, key):
    # With plain SGD at learning rate 1, the gradient w of this loss moves w to
    # exactly 0 in one step, and it stays there.
    return 0.5 * jnp.sum(model.w[...] ** 2)


def ema_after(updates, *, decay, warmup):
    """The EMA of a parameter that jumps from 1 to 0 at the first step: after
    ``updates`` updates it holds exactly the share of the initial value."""
    model = Jumper()
    ema = nnx.clone(model)
    optimizer = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
    train.fit(
        model,
        optimizer,
        to_zero,
        jnp.zeros((8, 1)),
        steps=updates,
        batch_size=4,
        key=jax.random.key(0),
        ema=ema,
        ema_decay=decay,
        ema_warmup=warmup,
        progress=False,
    )
    np.testing.assert_array_equal(model.w[...], 0.0)
    return np.asarray(ema.w[...], np.float64)


def warmup_share(updates, decay):
    """prod over n < updates of min(decay, (1 + n) / (10 + n)), in float64."""
    return math.prod(min(decay, (1 + n) / (10 + n)) for n in range(updates))


def test_warmup_share_has_its_closed_form():
    # Below the cross-over the product telescopes: prod (1+n)/(10+n) = 9! k! / (k+9)!.
    for k in (1, 5, 40):
        assert warmup_share(k, 0.999) == pytest.approx(1 / math.comb(k + 9, 9), rel=1e-12)


@pytest.mark.parametrize("updates, decay", [(5, 0.999), (100, 0.9), (300, 0.999)])
def test_ema_warmup_forgets_the_initial_value(updates, decay):
    with_warmup = ema_after(updates, decay=decay, warmup=True)
    without = ema_after(updates, decay=decay, warmup=False)
    # Without warm-up a fixed decay keeps decay**k of the initial value ...
    np.testing.assert_allclose(without, decay**updates, rtol=1e-4)
    # ... with it, the product of the warm-up decays, a tiny share.
    expected = warmup_share(updates, decay)
    np.testing.assert_allclose(with_warmup, expected, rtol=1e-4)
    if updates >= 100:
        assert expected < 1e-9 and expected < 1e-6 * without.min()
    # (100, 0.9) crosses over at n = 80, where (1 + n) / (10 + n) reaches 0.9: the
    # last 19 updates use the decay itself.
    if decay == 0.9:
        assert expected == pytest.approx(
            math.factorial(9) / math.prod(range(82, 91)) * 0.9**19, rel=1e-12
        )


def test_ema_warmup_off_by_default():
    # The default keeps a fixed decay: nothing changes for callers that do not opt in.
    model = Jumper()
    ema = nnx.clone(model)
    optimizer = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
    train.fit(
        model,
        optimizer,
        to_zero,
        jnp.zeros((8, 1)),
        steps=10,
        batch_size=4,
        key=jax.random.key(0),
        ema=ema,
        ema_decay=0.9,
        progress=False,
    )
    np.testing.assert_allclose(ema.w[...], 0.9**10, rtol=1e-5)


def test_resumed_run_with_ema_warmup_equals_the_uninterrupted_run(tmp_path):
    # The warm-up's count n comes from the step number, which a resumed run takes from
    # its checkpoint. (A Python counter would restart at 0 on resume and give a
    # different product of decays.)
    def run(**options):
        model = Jumper()
        ema = nnx.clone(model)
        optimizer = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
        train.fit(
            model,
            optimizer,
            to_zero,
            jnp.zeros((8, 1)),
            steps=10,
            batch_size=4,
            key=jax.random.key(0),
            ema=ema,
            ema_decay=0.999,
            ema_warmup=True,
            progress=False,
            **options,
        )
        return np.asarray(ema.w[...], np.float64)

    whole = run()
    directory = tmp_path / "ckpt"
    run(checkpoint_dir=directory, checkpoint_every=5, stop_after=4)
    resumed = run(checkpoint_dir=directory, checkpoint_every=5)  # resumes at step 4
    np.testing.assert_allclose(whole, warmup_share(10, 0.999), rtol=1e-5)
    np.testing.assert_allclose(resumed, whole, rtol=1e-6)
    restarted_count = warmup_share(4, 0.999) * warmup_share(6, 0.999)
    assert restarted_count < 0.1 * warmup_share(10, 0.999)


class Stop(Exception):
    pass


def test_mixture_recipe_and_bench_use_the_ema_warmup(monkeypatch):
    from diffbook import bench, mixture

    for name in ("cpu", "accelerator"):
        assert mixture.RECIPE[name]["ema_warmup"] is True
    seen = {}

    def spy(*args, **kwargs):  # record what the bench asks for, then stop: no training
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(train, "fit", spy)
    with pytest.raises(Stop):
        bench.main(["mixture", "--config", "cpu", "--train-steps", "4", "--num-samples", "64"])
    assert seen["ema_warmup"] is True and seen["ema_decay"] == 0.999
