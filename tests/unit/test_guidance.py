"""diffbook.guidance: classifier-free guidance for any condition (a class label, a prompt's
words: the tiny models of tests/conftest.py), classifier guidance with its classifier's loss,
guidance schedules, and the guided samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import (
    prompt_oracle,
    tiny_class_unet,
    tiny_prompts,
    tiny_text_to_image,
)
from diffbook import data, ddpm, guidance, nets, samplers
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


# ---------------------------------------------------------- with a text-to-image model


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


def test_guided_sampler_reads_a_v_network_as_v():
    # An exact v-network for known clean images: DDIM (eta 0) told that it predicts v
    # lands on the image of the prompt (scale 1) or of the empty prompt (scale 0) ...
    schedule, oracle, x0_cond, x0_uncond = prompt_oracle("v")
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
    schedule, oracle_eps, x0_cond, _ = prompt_oracle("epsilon")
    np.testing.assert_allclose(run(schedule, oracle_eps, 10, 1.0), x0_cond, atol=1e-3)


def test_guided_sample_on_an_explicit_grid_matches_the_sampler_and_starts_late():
    schedule, oracle, x0_cond, _ = prompt_oracle("v", steps=100)
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


# ------------------------------------------- classifier guidance and guidance schedules

SCHEDULE = NoiseSchedule.cosine(1000)

MEANS = jnp.array([[-1.0, 0.5], [1.0, -0.5]])  # two classes in 2-D, equally likely

TAU = 0.3  # each class is N(mean, TAU^2 I)


def _mixture_oracle(prediction):
    """Exact predictions and exact classifier for the two-class Gaussian mixture."""

    def parts(x, u):
        a = SCHEDULE.alpha_bar_at(u)[:, None]
        var = a * TAU**2 + 1 - a  # x_t | y ~ N(sqrt(a) mean_y, var I)
        centred = x[:, None, :] - jnp.sqrt(a)[:, None] * MEANS[None]  # (B, 2, D)
        logits = -(centred**2).sum(-1) / (2 * var)  # log p(x_t | y) + const: the classifier
        scores = -centred / var[:, None]  # grad log p(x_t | y), per class
        return a, logits, scores

    def to_prediction(x, a, score):
        eps = -jnp.sqrt(1 - a) * score
        x0 = (x - jnp.sqrt(1 - a) * eps) / jnp.sqrt(a)
        return {"epsilon": eps, "x0": x0, "v": jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0}[prediction]

    def unconditional(x, u):
        a, logits, scores = parts(x, u)
        w = jax.nn.softmax(logits, axis=1)[..., None]  # p(y | x_t)
        return to_prediction(x, a, (w * scores).sum(1))

    def conditional(x, u, y):
        a, _, scores = parts(x, u)
        return to_prediction(x, a, scores[jnp.arange(len(y)), y])

    def classifier(x, u):
        return parts(x, u)[1]

    return unconditional, conditional, classifier


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_classifier_guidance_with_exact_parts_is_the_conditional_model(prediction):
    unconditional, conditional, classifier = _mixture_oracle(prediction)
    x = jax.random.normal(jax.random.key(0), (6, 2))
    u = jnp.array([0.1, 0.3, 0.5, 0.6, 0.8, 0.95])
    y = jnp.array([0, 1, 0, 1, 0, 1])
    guided = guidance.classifier_guided_model_fn
    one = guided(SCHEDULE, unconditional, classifier, y, 1.0, prediction=prediction)
    np.testing.assert_allclose(one(x, u), conditional(x, u, y), rtol=1e-4, atol=1e-4)
    zero = guided(SCHEDULE, unconditional, classifier, y, 0.0, prediction=prediction)
    np.testing.assert_allclose(zero(x, u), unconditional(x, u), rtol=1e-6)
    # Scale 2 moves twice as far from the unconditional prediction as scale 1.
    two = guided(SCHEDULE, unconditional, classifier, y, 2.0, prediction=prediction)
    uncond = unconditional(x, u)
    np.testing.assert_allclose(
        two(x, u) - uncond, 2 * (conditional(x, u, y) - uncond), rtol=1e-3, atol=1e-4
    )
    # A schedule of u is evaluated at each example's own time.
    sched = guided(
        SCHEDULE,
        unconditional,
        classifier,
        y,
        lambda u: jnp.where(u < 0.5, 1.0, 0.0),
        prediction=prediction,
    )
    early = np.asarray(u) < 0.5
    np.testing.assert_allclose(
        sched(x, u), np.where(early[:, None], conditional(x, u, y), uncond), rtol=1e-4, atol=1e-4
    )


def test_classifier_guidance_rejects_bad_inputs():
    unconditional, _, classifier = _mixture_oracle("epsilon")
    with pytest.raises(ValueError, match="scale"):
        guidance.classifier_guided_model_fn(
            SCHEDULE, unconditional, classifier, jnp.zeros(2, int), -1.0
        )
    with pytest.raises(ValueError, match="labels"):
        guidance.classifier_guided_model_fn(SCHEDULE, unconditional, classifier, jnp.zeros(2), 1.0)
    with pytest.raises(ValueError, match="labels"):  # negative labels would wrap round
        guidance.classifier_guided_model_fn(
            SCHEDULE, unconditional, classifier, jnp.array([0, -1]), 1.0
        )
    clf = nets.NoisyClassifier(1, (8,), num_classes=10, emb_dim=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="labels"):  # past the classifier's classes
        guidance.classifier_guided_model_fn(SCHEDULE, unconditional, clf, jnp.array([3, 10]), 1.0)
    with pytest.raises(ValueError, match="prediction"):
        guidance.classifier_guided_model_fn(
            SCHEDULE, unconditional, classifier, jnp.zeros(2, int), 1.0, prediction="score"
        )


def test_guidance_schedules_have_the_documented_shapes():
    u = jnp.linspace(0.0, 1.0, 100_001)
    for kind in ("linear", "cosine"):
        s = guidance.guidance_schedule(kind, 3.0)(u)
        # Conditional at pure noise, 2s - 1 at the data, mean extra guidance s - 1.
        assert float(s[-1]) == pytest.approx(1.0, abs=1e-6)
        assert float(s[0]) == pytest.approx(5.0, abs=1e-6)
        assert float(jnp.mean(s - 1.0)) == pytest.approx(2.0, abs=1e-3)
    np.testing.assert_allclose(guidance.guidance_schedule("constant", 3.0)(u), 3.0)
    assert float(guidance.guidance_schedule("cosine", 3.0)(0.5)) == pytest.approx(3.0)
    assert float(guidance.guidance_schedule("linear", 3.0)(0.25)) == pytest.approx(4.0)
    inside = guidance.guidance_schedule("interval", 4.0, interval=(0.2, 0.6))
    np.testing.assert_allclose(inside(jnp.array([0.1, 0.2, 0.4, 0.6, 0.9])), [1, 4, 4, 4, 1])


def test_guidance_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        guidance.guidance_schedule("exponential", 2.0)
    with pytest.raises(ValueError, match="interval"):
        guidance.guidance_schedule("interval", 2.0)
    with pytest.raises(ValueError, match="interval"):
        guidance.guidance_schedule("linear", 2.0, interval=(0.1, 0.5))
    with pytest.raises(ValueError, match="interval"):
        guidance.guidance_schedule("interval", 2.0, interval=(0.6, 0.5))
    with pytest.raises(ValueError, match="scale"):
        guidance.guidance_schedule("cosine", float("nan"))
    with pytest.raises(ValueError, match="scale"):  # its weight 2 would give 1 + 2 (s - 1) < 0
        guidance.guidance_schedule("linear", 0.5)
    with pytest.raises(ValueError, match="guidance_schedule|kind"):
        guidance.GuidedSampler(SCHEDULE, steps=5, guidance_schedule="exponential")


def test_guided_sampler_checks_a_schedules_scale_before_tracing_it():
    # Under jit the scale is traced, so guidance_schedule cannot compare it with 1: the
    # sampler must refuse s < 1 itself, or s = 0 would run as s(u) = 2u - 1.
    model = tiny_class_unet()
    x_T = jax.random.normal(jax.random.key(3), (2, 8, 8, 1))
    labels = jnp.array([1, 7])
    for kind in ("linear", "cosine"):
        sampler = guidance.GuidedSampler(SCHEDULE, steps=3, guidance_schedule=kind)
        with pytest.raises(ValueError, match=f"scale must be >= 1 for the {kind} schedule"):
            sampler(model, (labels,), x_T, scale=0.0)
    # A constant scale below 1 is allowed (s = 0 is the unconditional model).
    x, _ = guidance.GuidedSampler(SCHEDULE, steps=3)(model, (labels,), x_T, scale=0.0)
    assert x.shape == x_T.shape


def test_guided_sampler_checks_labels_and_follows_a_schedule():
    model = tiny_class_unet()
    x_T = jax.random.normal(jax.random.key(3), (4, 8, 8, 1))
    labels = jnp.array([0, 3, 5, 9])
    with pytest.raises(ValueError, match="labels"):  # the null label is not a class to ask for
        guidance.GuidedSampler(SCHEDULE, steps=4)(
            model, (jnp.array([0, 3, 5, 10]),), x_T, scale=2.0
        )
    with pytest.raises(ValueError, match="labels"):
        guidance.GuidedSampler(SCHEDULE, steps=4)(
            model, (jnp.array([0, 3, 5, 12]),), x_T, scale=2.0
        )
    compiled = guidance.GuidedSampler(
        SCHEDULE, steps=4, guidance_schedule="interval", interval=(0.3, 0.7)
    )
    x, nfe = compiled(model, (labels,), x_T, scale=3.0)
    fn = guidance.guidance_schedule("interval", 3.0, interval=(0.3, 0.7))
    y, _ = guidance.guided_sample(SCHEDULE, model, (labels,), x_T, scale=fn, steps=4, clip_x0=True)
    np.testing.assert_allclose(x, y, atol=1e-5)
    constant, _ = guidance.GuidedSampler(SCHEDULE, steps=4)(model, (labels,), x_T, scale=3.0)
    assert nfe == 4 and not np.allclose(x, constant, atol=1e-4)


def test_classifier_loss_noises_images_and_matches_cross_entropy_when_clean():
    clf = nets.NoisyClassifier(1, (8, 16), num_classes=10, emb_dim=8, rngs=nnx.Rngs(0))
    x0, y = data.load_digits(split="train")
    batch = (jnp.asarray(x0[:32]), jnp.asarray(y[:32]))
    key = jax.random.key(5)
    clean = guidance.classifier_loss(SCHEDULE, clf, batch, key, noisy=False)
    expected = optax.softmax_cross_entropy_with_integer_labels(
        clf(batch[0], jnp.zeros(32)), batch[1]
    ).mean()
    np.testing.assert_allclose(clean, expected, rtol=1e-6)
    # Noised: the classifier is called on x_t at u = t/T, not on the clean images.
    seen = []
    spy = lambda x, u: (seen.append((x, u)), clf(x, u))[1]  # noqa: E731
    guidance.classifier_loss(SCHEDULE, spy, batch, key)
    x_seen, u_seen = seen[0]
    assert float(jnp.abs(x_seen - batch[0]).mean()) > 0.1
    assert 0.0 <= float(u_seen.min()) and float(u_seen.max()) < 1.0 and float(u_seen.std()) > 0.1
