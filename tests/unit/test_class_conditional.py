"""Chapter 6's module: its recipes build both backbones, whose labels are checked."""

import jax.numpy as jnp
import pytest
from flax import nnx

from diffbook import class_conditional, config


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
