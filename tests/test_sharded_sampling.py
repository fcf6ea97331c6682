"""Sampling and evaluation split their batches over the devices (train.shard_batch).

The device count is fixed when JAX starts, so the 8-device run is a fresh process
with 8 virtual CPU devices; the 1-device reference runs here (or in a second
process, if this one has several devices), and the two must agree.
"""

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import fast_compile_env
from diffbook import train

# What both runs compute.  `compute()` returns the arrays to compare and, per call
# site, how the batch was placed: `seen[name]` lists the (devices, shard shape) that
# the network was given (every trace of it), `placed[name]` the (spec, devices) of
# a result.  The networks are untrained and small: what is tested is where the
# batches live, which does not depend on the network.
SCRIPT = textwrap.dedent("""
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

MAIN = SCRIPT + textwrap.dedent("""
    import json, sys
    arrays, info = compute()
    np.savez(sys.argv[1], **arrays)
    print(json.dumps(info))
""")


def _start(devices: int, path) -> subprocess.Popen:
    env = fast_compile_env(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu"
    )
    return subprocess.Popen(
        [sys.executable, "-c", MAIN, str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(process: subprocess.Popen, path) -> tuple[dict, dict]:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return dict(np.load(path)), json.loads(stdout.strip().splitlines()[-1])


def _here() -> tuple[dict, dict]:
    namespace = {}
    exec(SCRIPT, namespace)
    arrays, info = namespace["compute"]()
    return arrays, json.loads(json.dumps(info))  # tuples to lists, as from the process


def test_eight_devices_sample_and_evaluate_what_one_device_does(tmp_path):
    running = _start(8, tmp_path / "8.npz")  # meanwhile, the 1-device run here
    if jax.device_count() == 1:
        one, one_info = _here()
    else:
        one, one_info = _result(_start(1, tmp_path / "1.npz"), tmp_path / "1.npz")
    eight, info = _result(running, tmp_path / "8.npz")
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
