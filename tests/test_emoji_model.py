"""diffbook.guidance with the emoji chapter's text-to-image model (a tiny one): condition
dropout, the guided model function and the guided sampler.  No emoji data needed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_prompts, tiny_text_to_image
from diffbook import guidance, samplers
from diffbook.schedules import NoiseSchedule


def test_guidance_combines_one_batched_call():
    model = tiny_text_to_image()
    tokens, mask = tiny_prompts()
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    t = jnp.array([100, 500, 900])
    # Compiled (one program for every scale): eager calls of a U-Net are slow.
    call = nnx.jit(lambda m, mask: m(x, t / 1000, tokens, mask))
    guided = nnx.jit(lambda m, s: guidance.guided_model_fn(m, (tokens, mask), s)(x, t / 1000))
    cond, uncond = call(model, mask), call(model, jnp.zeros_like(mask))
    for scale in (0.0, 1.0, 3.5):
        np.testing.assert_allclose(
            guided(model, scale), uncond + scale * (cond - uncond), atol=1e-5
        )
    np.testing.assert_allclose(guided(model, 1.0), cond, atol=1e-5)


@pytest.mark.parametrize("scale", [-1.0, float("nan"), float("inf")])
def test_bad_guidance_scales_raise(scale):
    with pytest.raises(ValueError, match="scale"):
        guidance.check_scale(scale)
    sampler = guidance.GuidedSampler(NoiseSchedule.cosine(50), steps=5)
    tokens, mask = tiny_prompts()
    with pytest.raises(ValueError, match="scale"):
        sampler(tiny_text_to_image(), (tokens, mask), jnp.zeros((3, 16, 16, 3)), scale=scale)


def test_guided_sampler_shapes_range_and_determinism():
    sampler = guidance.GuidedSampler(NoiseSchedule.cosine(50), steps=5)
    tokens, mask = tiny_prompts()
    model = tiny_text_to_image()
    x_T = jax.random.normal(jax.random.key(3), (3, 16, 16, 3))
    a, nfe = sampler(model, (tokens, mask), x_T, scale=2.0)
    b, _ = sampler(model, (tokens, mask), x_T, scale=2.0)
    # clip_x0 (on by default here): DDIM's last step returns the clipped clean image.
    assert a.shape == (3, 16, 16, 3) and float(a.min()) >= -1 and float(a.max()) <= 1
    assert int(nfe) == 5
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(sampler(model, (tokens, mask), x_T, scale=0.0)[0] - a).max()) > 0
    with pytest.raises(ValueError, match="batch"):
        sampler(model, (tokens, mask), x_T[:2], scale=1.0)


def test_condition_dropout():
    model = tiny_text_to_image()
    tokens, mask = tiny_prompts()
    images = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3), minval=-1, maxval=1)
    sched = NoiseSchedule.cosine(50)
    key = jax.random.key(4)
    # With p_uncond = 0 the loss is the plain conditional loss ...
    from diffbook.ddpm import diffusion_loss

    k_loss = jax.random.split(key)[1]
    plain = diffusion_loss(sched, lambda x, u: model(x, u, tokens, mask), images, k_loss)
    np.testing.assert_allclose(
        guidance.cfg_loss(sched, model, (images, tokens, mask), key, p_uncond=0.0), plain, rtol=1e-6
    )
    # ... and with p_uncond close to 1 it is the unconditional one.
    empty = diffusion_loss(
        sched, lambda x, u: model(x, u, tokens, jnp.zeros_like(mask)), images, k_loss
    )
    np.testing.assert_allclose(
        guidance.cfg_loss(sched, model, (images, tokens, mask), key, p_uncond=0.999999),
        empty,
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="p_uncond"):
        guidance.cfg_loss(sched, model, (images, tokens, mask), key, p_uncond=1.0)


class _Oracle(nnx.Module):
    """A known network: it outputs the exact ``prediction`` target of a fixed clean
    image, ``x0_cond`` when the prompt has a word and ``x0_uncond`` when it has none."""

    def __init__(self, schedule, x0_cond, x0_uncond, prediction):
        self.alpha_bars = nnx.Variable(jnp.asarray(schedule.alpha_bars))
        self.x0_cond, self.x0_uncond = nnx.Variable(x0_cond), nnx.Variable(x0_uncond)
        self.num_timesteps, self.prediction = schedule.num_timesteps, prediction

    def null_condition(self, tokens, mask):
        return tokens, jnp.zeros_like(mask)

    def __call__(self, x, u, tokens, mask):
        t = jnp.round(u * self.num_timesteps).astype(jnp.int32)
        ab = self.alpha_bars[...][t][:, None, None, None]
        # Row i of a batch is prompt i % 3 (guidance stacks the prompts twice).
        reps = (x.shape[0] // self.x0_cond.shape[0], 1, 1, 1)
        x0 = jnp.where(
            mask.any(1)[:, None, None, None],
            jnp.tile(self.x0_cond[...], reps),
            jnp.tile(self.x0_uncond[...], reps),
        )
        eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)
        if self.prediction == "epsilon":
            return eps
        return jnp.sqrt(ab) * eps - jnp.sqrt(1.0 - ab) * x0  # v


def _oracle_setup(prediction, steps=1000):
    schedule = NoiseSchedule.cosine(steps)
    x0_cond = jax.random.uniform(jax.random.key(1), (3, 16, 16, 3), minval=-0.9, maxval=0.9)
    x0_uncond = jax.random.uniform(jax.random.key(2), (3, 16, 16, 3), minval=-0.9, maxval=0.9)
    return schedule, _Oracle(schedule, x0_cond, x0_uncond, prediction), x0_cond, x0_uncond


def test_guided_sampler_reads_a_v_network_as_v():
    # An exact v-network for known clean images: DDIM (eta 0) told that it predicts v
    # lands on the image of the prompt (scale 1) or of the empty prompt (scale 0) ...
    schedule, oracle, x0_cond, x0_uncond = _oracle_setup("v")
    tokens, mask = tiny_prompts()
    x_T = jax.random.normal(jax.random.key(5), (3, 16, 16, 3))

    def run(schedule, model, steps, scale, **options):
        return guidance.GuidedSampler(schedule, steps=steps, **options)(
            model, (tokens, mask), x_T, scale=scale
        )[0]

    np.testing.assert_allclose(run(schedule, oracle, 10, 1.0, prediction="v"), x0_cond, atol=1e-3)
    np.testing.assert_allclose(run(schedule, oracle, 10, 0.0, prediction="v"), x0_uncond, atol=1e-3)
    # Read as noise (the default), the same output gives another picture.  At low noise
    # v is nearly the noise, so later steps of an exact network would hide the mistake;
    # one jump from pure noise shows it: there v is nearly -x0.
    np.testing.assert_allclose(run(schedule, oracle, 1, 1.0, prediction="v"), x0_cond, atol=1e-3)
    wrong = run(schedule, oracle, 1, 1.0)
    assert float(jnp.abs(wrong - x0_cond).mean()) > 0.3
    # An exact epsilon-network needs prediction="epsilon", and then lands there too.
    schedule, oracle_eps, x0_cond, _ = _oracle_setup("epsilon")
    np.testing.assert_allclose(run(schedule, oracle_eps, 10, 1.0), x0_cond, atol=1e-3)


def test_guided_sample_on_an_explicit_grid_matches_the_sampler_and_starts_late():
    schedule, oracle, x0_cond, _ = _oracle_setup("v", steps=100)
    tokens, mask = tiny_prompts()
    grid = samplers.ddim_timesteps(schedule.num_timesteps, 8)[::-1]
    x_T = jax.random.normal(jax.random.key(6), (3, 16, 16, 3))
    full, nfe = guidance.guided_sample(
        schedule,
        oracle,
        (tokens, mask),
        x_T,
        scale=2.0,
        timesteps=grid,
        prediction="v",
        clip_x0=True,
    )
    np.testing.assert_allclose(
        full,
        guidance.GuidedSampler(schedule, steps=8, prediction="v")(
            oracle, (tokens, mask), x_T, scale=2.0
        )[0],
        atol=1e-6,
    )
    assert nfe == 8
    # Started two steps later, from noise, the exact network still lands on its image.
    late, nfe = guidance.guided_sample(
        schedule,
        oracle,
        (tokens, mask),
        x_T,
        scale=1.0,
        timesteps=grid[2:],
        prediction="v",
        clip_x0=True,
    )
    np.testing.assert_allclose(late, x0_cond, atol=1e-3)
    assert nfe == 6
    with pytest.raises(ValueError, match="decrease"):
        guidance.guided_sample(
            schedule, oracle, (tokens, mask), x_T, scale=1.0, timesteps=grid[::-1], prediction="v"
        )


@pytest.mark.parametrize("prediction", ["v", "epsilon"])
def test_predict_x0_of_an_exact_network_is_the_image(prediction):
    schedule, oracle, x0_cond, x0_uncond = _oracle_setup(prediction)
    tokens, mask = tiny_prompts()
    noise = jax.random.normal(jax.random.key(7), x0_cond.shape)

    def estimate(mask, t):
        return samplers.predict_x0(
            schedule,
            lambda x, u: oracle(x, u, tokens, mask),
            x0_cond,
            t,
            noise,
            prediction=prediction,
            clip_x0=True,
        )

    for t in (10, 500, 900):
        np.testing.assert_allclose(estimate(mask, t), x0_cond, atol=1e-3)
    np.testing.assert_allclose(estimate(jnp.zeros_like(mask), 500), x0_uncond, atol=1e-3)
