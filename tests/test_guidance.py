import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffbook import ddpm, guidance, samplers
from diffbook.schedules import NoiseSchedule


class LabelModel(nnx.Module):
    """A tiny class-conditional network: label ``num_classes`` is "no label"."""

    def __init__(self, num_classes: int = 3, dim: int = 4):
        self.num_classes = num_classes
        self.table = nnx.Param(jax.random.normal(jax.random.key(0), (num_classes + 1, dim)))
        self.w = nnx.Param(jnp.array(0.7))

    def __call__(self, x, u, labels):
        return self.w * x + self.table[labels] * (1.0 - u)[:, None]

    def null_condition(self, labels):
        return (jnp.full_like(labels, self.num_classes),)


def _inputs(b=6, dim=4):
    x = jax.random.normal(jax.random.key(1), (b, dim))
    u = jnp.linspace(0.1, 0.9, b)
    labels = jnp.arange(b) % 3
    return x, u, labels


def test_guided_model_is_uncond_plus_scale_times_the_difference():
    model = LabelModel()
    x, u, labels = _inputs()
    cond = model(x, u, labels)
    uncond = model(x, u, jnp.full_like(labels, 3))
    for scale in (0.0, 1.0, 3.0):
        np.testing.assert_allclose(
            guidance.guided_model_fn(model, (labels,), scale)(x, u),
            uncond + scale * (cond - uncond),
            atol=1e-6,
        )


def test_a_guidance_schedule_is_applied_at_each_examples_time():
    model = LabelModel()
    x, u, labels = _inputs()
    cond, uncond = model(x, u, labels), model(x, u, jnp.full_like(labels, 3))
    interval = lambda u: jnp.where(u < 0.5, 4.0, 1.0)  # noqa: E731  (guide late only)
    expected = uncond + np.where(np.asarray(u) < 0.5, 4.0, 1.0)[:, None] * (cond - uncond)
    np.testing.assert_allclose(
        guidance.guided_model_fn(model, (labels,), interval)(x, u), expected, atol=1e-6
    )


def test_cfg_loss_drops_conditions_with_probability_p_uncond():
    schedule = NoiseSchedule.cosine(50)
    model = LabelModel()
    x0 = jax.random.normal(jax.random.key(2), (4096, 4))
    labels = jnp.arange(4096) % 3
    key = jax.random.key(3)
    # p_uncond = 0 is the plain conditional loss; the dropout draws its own key first.
    conditional = ddpm.diffusion_loss(
        schedule, lambda x, u: model(x, u, labels), x0, jax.random.split(key)[1]
    )
    np.testing.assert_allclose(
        guidance.cfg_loss(schedule, model, (x0, labels), key, p_uncond=0.0), conditional, rtol=1e-6
    )
    # The network sees the null label on about a p_uncond share of the examples.
    seen = []

    class Spy(LabelModel):
        def __call__(self, x, u, labels):
            seen.append(labels)
            return super().__call__(x, u, labels)

    guidance.cfg_loss(schedule, Spy(), (x0, labels), key, p_uncond=0.25)
    share = float(jnp.mean(seen[-1] == 3))
    assert 0.22 < share < 0.28
    kept = seen[-1] != 3
    np.testing.assert_array_equal(seen[-1][kept], labels[kept])  # the others keep their label
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="p_uncond"):
            guidance.cfg_loss(schedule, model, (x0, labels), key, p_uncond=bad)


def test_guided_sample_counts_one_call_per_step_and_matches_the_compiled_sampler():
    schedule = NoiseSchedule.cosine(100)
    model = LabelModel()
    x_T = jax.random.normal(jax.random.key(4), (6, 4))
    labels = jnp.arange(6) % 3
    x, nfe = guidance.guided_sample(
        schedule, model, (labels,), x_T, scale=2.0, steps=10, prediction="v"
    )
    assert nfe == 10
    # Scale 1 is the conditional model itself.
    plain, _ = samplers.ddim_sample(
        schedule, lambda x, u: model(x, u, labels), x_T, steps=10, prediction="v"
    )
    once, _ = guidance.guided_sample(
        schedule, model, (labels,), x_T, scale=1.0, steps=10, prediction="v"
    )
    np.testing.assert_allclose(once, plain, atol=1e-5)
    compiled = guidance.GuidedSampler(schedule, steps=10, prediction="v", clip_x0=False)
    for scale, expected in ((2.0, x), (1.0, plain)):
        got, got_nfe = compiled(model, (labels,), x_T, scale=scale)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert int(got_nfe) == 10


def test_stochastic_guided_samplers_need_a_key():
    schedule = NoiseSchedule.cosine(20)
    model = LabelModel()
    x_T, labels = jnp.zeros((2, 4)), jnp.array([0, 1])
    with pytest.raises(ValueError, match="key"):
        guidance.guided_sample(schedule, model, (labels,), x_T, scale=1.0, sampler="ancestral")
    x, nfe = guidance.guided_sample(
        schedule, model, (labels,), x_T, jax.random.key(0), scale=1.0, sampler="ancestral"
    )
    assert x.shape == x_T.shape and nfe == 20
    compiled = guidance.GuidedSampler(schedule, sampler="ancestral", clip_x0=False)
    with pytest.raises(ValueError, match="key"):
        compiled(model, (labels,), x_T, scale=1.0)
    np.testing.assert_allclose(
        compiled(model, (labels,), x_T, jax.random.key(0), scale=1.0)[0], x, atol=1e-5
    )


def test_bad_guidance_inputs_raise():
    schedule = NoiseSchedule.cosine(20)
    model = LabelModel()
    x_T, labels = jnp.zeros((2, 4)), jnp.array([0, 1])
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="scale"):
            guidance.guided_model_fn(model, (labels,), bad)
    with pytest.raises(TypeError, match="scale"):
        guidance.guided_model_fn(model, (labels,), "large")
    with pytest.raises(TypeError, match="null_condition"):
        guidance.guided_model_fn(lambda x, u, y: x, (labels,), 1.0)
    with pytest.raises(TypeError, match="cond"):
        guidance.guided_model_fn(model, labels, 1.0)
    with pytest.raises(ValueError, match="sampler"):
        guidance.guided_sample(schedule, model, (labels,), x_T, scale=1.0, sampler="heun")
    with pytest.raises(ValueError, match="batch"):
        guidance.GuidedSampler(schedule, steps=5)(model, (jnp.array([0, 1, 2]),), x_T, scale=1.0)
