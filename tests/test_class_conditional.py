"""Classifier guidance, guidance schedules, the class-conditional networks and their judge."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import assert_every_param_gets_a_gradient
from diffbook import class_conditional, config, data, guidance, metrics, nets
from diffbook.schedules import NoiseSchedule

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


def _tiny_unet(seed=0):
    model = nets.UNet(1, (8, 16), emb_dim=16, num_classes=10, rngs=nnx.Rngs(seed))
    # The output layer starts at zero; give it weights so that inputs matter.
    model.out.kernel[...] = 0.1 * jax.random.normal(jax.random.key(1), model.out.kernel.shape)
    return model


def test_class_conditional_unet_reads_its_labels():
    model = _tiny_unet()
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    u = jnp.full((4,), 0.5)
    call = nnx.jit(lambda m, y: m(x, u, y))  # compiled once: eager U-Net calls are slow
    a = call(model, jnp.array([0, 1, 2, 3]))
    b = call(model, jnp.array([0, 1, 2, 7]))
    np.testing.assert_allclose(a[:3], b[:3], atol=1e-6)  # one example's label moves only it
    assert not np.allclose(a[3], b[3])
    (null,) = model.null_condition(jnp.array([3, 4]))
    np.testing.assert_array_equal(null, [10, 10])
    with pytest.raises(ValueError, match="labels"):
        model(x, u)  # built with classes: labels are required
    with pytest.raises(ValueError, match="labels"):
        model(x, u, jnp.array([0, 1, 2, 11]))
    with pytest.raises(TypeError, match="labels"):
        model(x, u, jnp.zeros(4))
    with pytest.raises(ValueError, match="labels"):
        nets.UNet(1, (8, 16), emb_dim=16, rngs=nnx.Rngs(0))(x, u, jnp.zeros(4, int))


def test_guided_sampler_checks_labels_and_follows_a_schedule():
    model = _tiny_unet()
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


def test_noisy_classifier_shapes_gradients_and_errors():
    clf = nets.NoisyClassifier(1, (8, 16), num_classes=10, emb_dim=8, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(4), (3, 8, 8, 1))
    u = jnp.array([0.0, 0.5, 0.9])
    assert clf(x, u).shape == (3, 10)
    assert_every_param_gets_a_gradient(clf, lambda c: jnp.sum(c(x, u) ** 2), jit=True)
    with pytest.raises(ValueError, match="x must have shape"):
        clf(jnp.zeros((3, 8, 8, 3)), u)
    with pytest.raises(ValueError, match="num_classes"):
        nets.NoisyClassifier(1, (8,), num_classes=1, rngs=nnx.Rngs(0))


def test_classifier_loss_noises_images_and_matches_cross_entropy_when_clean():
    clf = nets.NoisyClassifier(1, (8, 16), num_classes=10, emb_dim=8, rngs=nnx.Rngs(0))
    x0, y = data.load_digits(split="train")
    batch = (jnp.asarray(x0[:32]), jnp.asarray(y[:32]))
    key = jax.random.key(5)
    clean = class_conditional.classifier_loss(SCHEDULE, clf, batch, key, noisy=False)
    expected = optax.softmax_cross_entropy_with_integer_labels(
        clf(batch[0], jnp.zeros(32)), batch[1]
    ).mean()
    np.testing.assert_allclose(clean, expected, rtol=1e-6)
    # Noised: the classifier is called on x_t at u = t/T, not on the clean images.
    seen = []
    spy = lambda x, u: (seen.append((x, u)), clf(x, u))[1]  # noqa: E731
    class_conditional.classifier_loss(SCHEDULE, spy, batch, key)
    x_seen, u_seen = seen[0]
    assert float(jnp.abs(x_seen - batch[0]).mean()) > 0.1
    assert 0.0 <= float(u_seen.min()) and float(u_seen.max()) < 1.0 and float(u_seen.std()) > 0.1


def test_class_conditional_models_and_label_checks():
    cfg = config.pick(class_conditional.RECIPE, "cpu")
    x = jnp.zeros((2, 8, 8, 1))
    for backbone in class_conditional.BACKBONES:
        model = class_conditional.make_model(cfg, backbone)
        out = nnx.jit(lambda m: m(x, jnp.array([0.2, 0.7]), jnp.array([3, 10])))(model)
        assert out.shape == x.shape
    with pytest.raises(ValueError, match="backbone"):
        class_conditional.make_model(cfg, "resnet")
    # A requested label is a digit 0..9: the null label 10 is for guidance to add.
    model.check_condition(jnp.array([0, 9]))
    with pytest.raises(ValueError, match="labels"):
        model.check_condition(jnp.array([0, 10]))
    with pytest.raises(TypeError, match="labels"):
        model.check_condition(jnp.array([0.5]))


def test_class_conditional_quality_of_real_held_out_digits():
    held, held_labels = data.load_digits(split="held_out")
    q = metrics.class_conditional_quality(held, held_labels, per_digit=False, repeats=2)
    # The held-out images, judged as samples, score exactly their own references.
    assert q["accuracy"] == q["accuracy_gen"] > 0.9
    assert q["fd"] == pytest.approx(0.0, abs=1e-6) and q["nn_ratio"] == pytest.approx(1.0)
    wrong = metrics.class_conditional_quality(
        held, (held_labels + 1) % 10, per_digit=False, repeats=2
    )
    assert wrong["accuracy"] < 0.05
    with pytest.raises(ValueError, match="labels"):
        metrics.class_conditional_quality(held, held_labels[:-1], per_digit=False)
    with pytest.raises(ValueError, match="labels"):
        metrics.class_conditional_quality(held, held_labels + 10, per_digit=False)
