"""diffbook.nets.classifier: the noise-aware classifier of classifier guidance."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from conftest import (
    assert_every_param_gets_a_gradient,
)
from diffbook import nets


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
