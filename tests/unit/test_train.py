import json
import math
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

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


# ------------------------------------------------------------- the EMA warm-up of fit


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


# ---------------------------------------------------------------------------
# Sampling and evaluation split their batches over the devices (train.shard_batch).
# The device count is fixed when JAX starts, so the 8-device run is a fresh process
# with 8 virtual CPU devices; the 1-device reference runs here (or in a second
# process, if this one has several devices), and the two must agree.
# ---------------------------------------------------------------------------


# What both runs compute.  `compute()` returns the arrays to compare and, per call
# site, how the batch was placed: `seen[name]` lists the (devices, shard shape) that
# the network was given (every trace of it), `placed[name]` the (spec, devices) of
# a result.  The networks are untrained and small: what is tested is where the
# batches live, which does not depend on the network.
SAMPLING_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from diffbook import autoencoder, guidance, latent_diffusion, nets, samplers, train, vae
    from diffbook.schedules import NoiseSchedule


    def compute():
        mesh = train.data_mesh()
        sched = NoiseSchedule.cosine(20)
        key = jax.random.key(3)
        seen, placed, out = {}, {}, {}

        def watch(name, x):
            def record(s):
                seen.setdefault(name, set()).add((len(s.device_set), s.shard_shape(x.shape)))
            jax.debug.inspect_array_sharding(x, callback=record)
            return x

        def place(name, x):
            sharding = getattr(x, "sharding", None)  # None for a NumPy array
            devices = len(sharding.device_set) if sharding else 1
            placed[name] = [repr(getattr(sharding, "spec", None)), devices]
            return x

        # A class-conditional U-Net, its weights replicated as train.fit leaves them.
        unet = nets.UNet(1, (8,), emb_dim=8, num_classes=10, attention=False,
                         rngs=nnx.Rngs(0))
        unet.out.kernel[...] = 0.1 * jax.random.normal(jax.random.key(1),
                                                       unet.out.kernel.shape)
        nnx.update(unet, train.replicate(nnx.state(unet), mesh))
        labels = jnp.arange(16) % 10

        @nnx.jit
        def unet_samples(m, key):
            return {f"unet_{name}": samplers.sample(
                name, sched, lambda x, u: m(watch(f"unet_{name}", x), u, labels), key,
                (16, 8, 8, 1), prediction="v", clip_x0=True, steps=steps)[0]
                for name, steps in (("ddim", 5), ("ancestral", None))}

        for name, x in unet_samples(unet, key).items():
            out[name] = place(name, x)
        # Guided: called eagerly (x_T placed by device_put), and compiled with a batch
        # of 12, which does not divide by 8.
        x_T = jax.random.normal(jax.random.key(4), (16, 8, 8, 1))
        out["guided"] = place("guided", guidance.guided_sample(
            sched, unet, (labels,), x_T, jax.random.key(5), scale=2.0, sampler="ddim",
            steps=4, eta=1.0, prediction="v", clip_x0=True)[0])

        class Watched(nnx.Module):  # the U-Net, watched where the guided sampler calls it
            def __init__(self, net):
                self.net = net

            def __call__(self, x, u, labels):
                return self.net(watch("guided12", x), u, labels)

            def null_condition(self, labels):
                return self.net.null_condition(labels)

        out["guided12"] = place("guided12", guidance.GuidedSampler(
            sched, steps=4, prediction="v")(Watched(unet), (labels[:12],), x_T[:12],
                                            jax.random.key(6), scale=3.0)[0])

        # Every sampler of the registry, with a cheap elementwise "network".
        def toy(name):
            return lambda x, u: watch(name, x) * (0.5 + 0.4 * u[:, None]) + 0.1 * jnp.sin(3 * x)

        # pc also with a batch of 12: its corrector's step size is a mean over the batch.
        # One compiled function for them all (compiling is what takes the time).
        runs = [(name, 16) for name in samplers.SAMPLERS] + [("pc", 12)]
        weights = jax.random.normal(jax.random.key(8), (4, 3))
        guided_fn = guidance.classifier_guided_model_fn(
            sched, toy("classifier"), lambda x, u: x @ weights, jnp.arange(16) % 3, 2.0)

        @jax.jit
        def every_sampler(key):
            results = {f"{name}{n}": samplers.sample(
                name, sched, toy(f"{name}{n}"), key, (n, 4), steps={"ddim": 5, "sde": 5}.get(name))
                for name, n in runs}
            results["classifier"] = samplers.sample("ddim", sched, guided_fn, key, (16, 4),
                                                    steps=5)
            return results

        for name, (x, nfe) in every_sampler(key).items():
            out[name] = place(name, x)
            out[f"{name}_nfe"] = np.asarray(nfe)

        # The noise, drawn split and whole: partitionable threefry gives the same numbers.
        noise = jax.jit(lambda k: {f"noise{n}": train.shard_batch(
            jax.random.normal(k, (n, 8, 8, 1))) for n in (16, 12)})(key)
        for name, x in noise.items():
            out[name] = place(name, x)

        # Evaluation and decoding that run a network on many samples.
        v = vae.VAE(8, 32, rngs=nnx.Rngs(7))
        images = jnp.tanh(jax.random.normal(jax.random.key(9), (64, 8, 8, 1)))
        out["elbo"] = np.asarray(vae.evaluate_elbo(v, images, key=key, num_samples=2))
        out["prior"] = place("prior", vae.sample_prior(v, key, 16))
        ae = autoencoder.Autoencoder(8, 2, 2, 8, 0, rngs=nnx.Rngs(10))
        colour = jnp.tanh(jax.random.normal(jax.random.key(11), (16, 8, 8, 3)))
        out["latents"] = latent_diffusion.encode(ae, colour)
        out["decoded"] = latent_diffusion.decode(ae, out["latents"])

        # shard_batch itself: a pytree, eager and traced, on all devices and on 4 of them.
        batch = (np.arange(16.0).reshape(8, 2), {"labels": jnp.arange(12)})
        for how, tree in (("eager", train.shard_batch(batch)),
                          ("traced", jax.jit(train.shard_batch)(batch)),
                          ("four", train.shard_batch(batch, train.data_mesh(jax.devices()[:4])))):
            for i, (a, b) in enumerate(zip(jax.tree.leaves(tree), jax.tree.leaves(batch))):
                place(f"{how}{i}", a)
                out[f"{how}{i}"] = a
                assert np.array_equal(a, b)

        info = {"devices": jax.device_count(), "placed": placed,
                "seen": {k: sorted([d, list(s)] for d, s in v) for k, v in seen.items()}}
        return {k: np.asarray(x) for k, x in out.items()}, info
""")

SAMPLING_MAIN = SAMPLING_SCRIPT + textwrap.dedent("""
    import json, sys
    arrays, info = compute()
    np.savez(sys.argv[1], **arrays)
    print(json.dumps(info))
""")


def _start_sampling(devices: int, path) -> subprocess.Popen:
    env = fast_compile_env(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu"
    )
    return subprocess.Popen(
        [sys.executable, "-c", SAMPLING_MAIN, str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _sampling_result(process: subprocess.Popen, path) -> tuple[dict, dict]:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return dict(np.load(path)), json.loads(stdout.strip().splitlines()[-1])


def _sampling_here() -> tuple[dict, dict]:
    namespace = {}
    exec(SAMPLING_SCRIPT, namespace)
    arrays, info = namespace["compute"]()
    return arrays, json.loads(json.dumps(info))  # tuples to lists, as from the process


def test_eight_devices_sample_and_evaluate_what_one_device_does(tmp_path):
    running = _start_sampling(8, tmp_path / "8.npz")  # meanwhile, the 1-device run here
    if jax.device_count() == 1:
        one, one_info = _sampling_here()
    else:
        one, one_info = _sampling_result(_start_sampling(1, tmp_path / "1.npz"), tmp_path / "1.npz")
    eight, info = _sampling_result(running, tmp_path / "8.npz")
    assert (one_info["devices"], info["devices"]) == (1, 8)
    assert set(eight) == set(one)
    for name, x in one.items():
        np.testing.assert_allclose(eight[name], x, rtol=1e-5, atol=1e-5, err_msg=name)
        if x.ndim:
            assert np.std(x) > 0.05, name  # real samples, not a constant that would also match
    for n in (16, 12):  # the noise is the same numbers however it is split
        np.testing.assert_array_equal(eight[f"noise{n}"], one[f"noise{n}"])

    # One device: the network saw the whole batch, nothing was split.
    assert one_info["seen"]["unet_ddim"] == [[1, [16, 8, 8, 1]]]
    # Eight devices: a batch of 16 is split, 2 samples a device, at every network call
    # of every sampler; the samples come back split.
    split, whole = repr(P("data")), repr(P())
    assert info["seen"]["unet_ddim"] == info["seen"]["unet_ancestral"] == [[8, [2, 8, 8, 1]]]
    for name in ("ancestral", "ddim", "pc", "annealed_langevin", "ode", "sde"):
        assert info["seen"][f"{name}16"] == [[8, [2, 4]]], name
        assert info["placed"][f"{name}16"] == [split, 8], name
    assert info["seen"]["classifier"] == [[8, [2, 4]]]
    for name in ("unet_ddim", "unet_ancestral", "guided", "classifier", "noise16", "prior"):
        assert info["placed"][name] == [split, 8], name
    # A batch of 12 does not divide by 8: every device holds (and computes) all of it.
    for name in ("guided12", "pc12", "noise12"):
        assert info["placed"][name] == [whole, 8], name
    assert info["seen"]["pc12"] == [[8, [12, 4]]]
    # The guided network's doubled batch, 24, divides by 8 and is split all the same.
    assert info["seen"]["guided12"] == [[8, [3, 8, 8, 1]]]
    # shard_batch, on (8, 2) rows and (12,) labels: the rows split, the labels on every device,
    # whether placed eagerly or inside jit; on a mesh of 4 devices, over those 4.
    for how in ("eager", "traced"):
        assert [info["placed"][f"{how}{i}"] for i in (0, 1)] == [[split, 8], [whole, 8]], how
    assert [info["placed"][f"four{i}"] for i in (0, 1)] == [[split, 4], [split, 4]]


# ---------------------------------------------------------------------------- shard_batch
def test_shard_batch_on_one_device_returns_its_argument():
    # So one-device programs are unchanged, bit for bit (CI compares stored outputs).
    one = train.data_mesh(jax.devices()[:1])
    x = jnp.ones((5, 3))
    assert train.shard_batch(x, one) is x
    batch = (np.zeros((4, 2)), {"labels": jnp.arange(4)})
    assert train.shard_batch(batch, one) is batch
    traced = []
    jax.jit(lambda a: traced.append(train.shard_batch(a, one) is a) or a)(x)
    assert traced == [True]


def test_shard_batch_rejects_bad_arguments():
    with pytest.raises(TypeError, match="mesh"):
        train.shard_batch(jnp.ones((4, 2)), mesh=jax.devices())
    other = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
    with pytest.raises(ValueError, match="'data'"):
        train.shard_batch(jnp.ones((4, 2)), mesh=other)
    with pytest.raises(ValueError, match=r"x must hold batches .* shape \(\)"):
        train.shard_batch(jnp.float32(1.0))
    with pytest.raises(ValueError, match=r"shape \(\)"):
        train.shard_batch((jnp.ones((4, 2)), 3.0))
    with pytest.raises(ValueError, match="x must be an array or a pytree"):
        train.shard_batch(())
