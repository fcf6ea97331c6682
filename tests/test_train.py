import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import fast_compile_env
from diffbook import train


class Regressor(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(3, 1, rngs=rngs)

    def __call__(self, x):
        return self.linear(x)


def mse(model, batch, key):
    x, y = batch
    return jnp.mean((model(x) - y) ** 2)


def regression_data(n=256):
    x = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    return x, x @ np.array([[1.0], [-2.0], [0.5]], np.float32)


def test_fit_learns_and_tracks_an_ema():
    model = Regressor(nnx.Rngs(0))
    ema = nnx.clone(model)  # shares arrays with `model` at first: fit must cope
    opt = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)
    history = train.fit(
        model,
        opt,
        mse,
        regression_data(),
        steps=300,
        batch_size=32,
        key=jax.random.key(0),
        ema=ema,
        ema_decay=0.9,
        check_every=7,
    )
    assert history.loss.shape == (300,)
    assert history.loss[-20:].mean() < 1e-3 * history.loss[:5].mean()
    np.testing.assert_allclose(model.linear.kernel[...][:, 0], [1.0, -2.0, 0.5], atol=1e-2)
    np.testing.assert_allclose(ema.linear.kernel[...], model.linear.kernel[...], atol=1e-2)
    n = jax.device_count()
    assert (history.steps, history.devices) == (300, n)
    # 32 per step, or the next multiple of the device count.
    assert history.batch_size % n == 0 and 32 <= history.batch_size < 32 + n


def test_nan_loss_stops_training_with_the_step():
    x, y = regression_data()
    y[5:] = np.nan
    model = Regressor(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    with pytest.raises(FloatingPointError, match=r"loss became nan at step \d+"):
        train.fit(model, opt, mse, (x, y), steps=50, batch_size=64, key=jax.random.key(0))


def test_bad_arguments():
    model = Regressor(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    data = regression_data()
    for kwargs, match in [
        (dict(steps=0), "steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(check_every=0), "check_every"),
    ]:
        args = dict(steps=5, batch_size=8, key=jax.random.key(0)) | kwargs
        with pytest.raises(ValueError, match=match):
            train.fit(model, opt, mse, data, **args)
    with pytest.raises(ValueError, match="leading size"):
        train.fit(
            model, opt, mse, (data[0], data[1][:10]), steps=5, batch_size=8, key=jax.random.key(0)
        )
    with pytest.raises(TypeError, match="steps"):
        train.fit(model, opt, mse, data, steps=5.0, batch_size=8, key=jax.random.key(0))
    with pytest.raises(ValueError, match="warmup must be less than steps"):
        train.warmup_cosine(1e-3, 10, 10)
    with pytest.raises(ValueError, match="peak_lr"):
        train.warmup_cosine(float("nan"), 10, 1)
    with pytest.raises(ValueError, match="clip"):
        train.adamw_with_ema(model, peak_lr=1e-3, steps=10, warmup=1, clip=0.0)


# Rounding needs more than one device, so it runs in a process with 8 virtual CPUs.
ROUNDING = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, optax
    from flax import nnx
    from diffbook import train

    sizes = (1, 2, 3, 7, 8, 9, 12, 16, 17)
    rounded = {n: [train.global_batch_size(b, train.data_mesh(jax.devices()[:n])) for b in sizes]
               for n in (8, 3, 1)}
    # What the loss function of fit really receives, and how it is split over the devices.
    seen = []

    def loss_fn(model, batch, key):
        seen.append(batch.shape)
        jax.debug.inspect_array_sharding(
            batch, callback=lambda s: seen.append(
                (len(s.device_set), s.shard_shape(batch.shape))))
        return jnp.mean(model(batch) ** 2)

    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    history = train.fit(model, opt, loss_fn, jnp.ones((40, 2)), steps=2, batch_size=12,
                        key=jax.random.key(0), progress=False)
    print(json.dumps({"devices": jax.device_count(), "rounded": rounded, "seen": seen,
                      "history": [history.batch_size, history.devices]}))
""")


def test_batches_are_rounded_up_to_the_device_count():
    env = fast_compile_env(
        XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", ROUNDING],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    # batch sizes       1  2  3  7  8   9  12  16  17
    assert result["rounded"] == {
        "8": [8, 8, 8, 8, 8, 16, 16, 16, 24],
        "3": [3, 3, 3, 9, 9, 9, 12, 18, 18],
        "1": [1, 2, 3, 7, 8, 9, 12, 16, 17],
    }
    # fit asked for 12 on 8 devices: the loss saw 16 examples, 2 on each device.
    assert result["history"] == [16, 8]
    assert result["seen"] == [[16, 2], [8, [2, 2]]]


# The same training run on 1 and on 8 (virtual CPU) devices, each in a fresh
# process because the device count is fixed when JAX starts.
SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from flax import nnx
    from diffbook import ddpm, mixture, train
    from diffbook.schedules import NoiseSchedule

    # A small MLP compiles in seconds on 8 devices; what is tested is the data
    # parallelism of `fit`, which does not depend on the network.
    sched = NoiseSchedule.linear(100)
    data = mixture.standardise(mixture.MIXTURE.sample(jax.random.key(2), 256))
    loss_fn = lambda m, x, k: ddpm.diffusion_loss(sched, m, x, k, prediction="v")
    model = mixture.MixtureMLP(16, 2, rngs=nnx.Rngs(0))
    initial = [np.asarray(p).ravel() for p in jax.tree.leaves(nnx.state(model, nnx.Param))]
    # Plain SGD: parameters then differ exactly as much as the gradients do (Adam's
    # normalisation would magnify float noise in near-zero gradients).
    opt = nnx.Optimizer(model, optax.sgd(0.05), wrt=nnx.Param)
    batch = int(sys.argv[1])
    mesh = train.data_mesh()
    history = train.fit(model, opt, loss_fn, data, steps=3, batch_size=batch,
                        key=jax.random.key(0), mesh=mesh)
    # The parameters really are replicated and the step ran on every device.
    kernel = model.inp.kernel[...]
    leaves = [np.asarray(p).ravel() for p in jax.tree.leaves(nnx.state(model, nnx.Param))]
    print(json.dumps({"devices": jax.device_count(), "batch": history.batch_size,
                      "replicated": kernel.sharding.is_fully_replicated,
                      "on_devices": len(kernel.sharding.device_set),
                      "loss": history.loss.tolist(),
                      "params": np.concatenate(leaves).tolist(),
                      "moved": float(np.abs(np.concatenate(leaves)
                                            - np.concatenate(initial)).max())}))
""")


def _run(devices: int, batch: int) -> dict:
    env = fast_compile_env(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(batch)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_eight_devices_match_one_device():
    one, eight = _run(1, 32), _run(8, 32)
    assert (one["devices"], eight["devices"]) == (1, 8)
    assert eight["replicated"] and eight["on_devices"] == 8
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-5)
    np.testing.assert_allclose(eight["params"], one["params"], atol=1e-5)
    # The steps moved the weights by far more than the tolerance (three steps that
    # changed nothing would also "match").
    assert one["moved"] > 1e-3
    # (Batches that do not divide by 8 are test_batches_are_rounded_up_to_the_device_count's.)


def test_checkpoint_resume_equals_the_uninterrupted_run(tmp_path):
    from diffbook import ddpm, mixture
    from diffbook.schedules import NoiseSchedule

    sched = NoiseSchedule.linear(100)
    data = mixture.standardise(mixture.MIXTURE.sample(jax.random.key(0), 512))
    traced = []

    def loss_fn(m, x, k):
        traced.append(1)  # once each time a training step is traced
        return ddpm.diffusion_loss(sched, m, x, k, prediction="v")

    def run(**options):
        model = mixture.MixtureMLP(16, 1, rngs=nnx.Rngs(0))
        ema, optimizer = train.adamw_with_ema(model, peak_lr=1e-2, steps=30, warmup=3)
        history = train.fit(
            model,
            optimizer,
            loss_fn,
            data,
            steps=30,
            batch_size=32,
            key=jax.random.key(1),
            ema=ema,
            ema_decay=0.9,
            check_every=4,
            progress=False,
            **options,
        )
        return model, ema, history

    model1, ema1, h1 = run()
    directory = tmp_path / "ckpt"
    _, _, part = run(checkpoint_dir=directory, checkpoint_every=5, stop_after=12)
    assert part.steps == 12 and len(part.loss) == 12
    model2, ema2, h2 = run(checkpoint_dir=directory, checkpoint_every=5)  # resumes at 12
    assert h2.steps == 30 and len(h2.loss) == 30
    np.testing.assert_allclose(h2.loss, h1.loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(
        jax.tree.leaves(nnx.state((model1, ema1), nnx.Param)),
        jax.tree.leaves(nnx.state((model2, ema2), nnx.Param)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # A finished run found in the folder is not trained again: no step is even traced.
    traced.clear()
    model3, ema3, again = run(checkpoint_dir=directory)
    assert again.steps == 30 and traced == []
    np.testing.assert_array_equal(again.loss, h2.loss)
    for a, b in zip(
        jax.tree.leaves(nnx.state((model2, ema2), nnx.Param)),
        jax.tree.leaves(nnx.state((model3, ema3), nnx.Param)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_resume_settings_raise(tmp_path):
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    _, optimizer = train.adamw_with_ema(model, peak_lr=1e-3, steps=10, warmup=1)
    loss_fn = lambda m, x, k: jnp.mean(m(x) ** 2)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train.fit(
            model,
            optimizer,
            loss_fn,
            jnp.ones((8, 2)),
            steps=10,
            batch_size=4,
            key=jax.random.key(0),
            stop_after=5,
        )
    with pytest.raises(ValueError, match="checkpoint_every"):
        train.fit(
            model,
            optimizer,
            loss_fn,
            jnp.ones((8, 2)),
            steps=10,
            batch_size=4,
            key=jax.random.key(0),
            checkpoint_dir=tmp_path,
            checkpoint_every=0,
        )
