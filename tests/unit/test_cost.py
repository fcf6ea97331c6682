"""diffbook.cost: XLA's FLOP counts of the chapters' steps, and every accelerator recipe
held to its budget on a Colab T4 (lowering only: nothing is compiled or trained)."""

import json

import jax
import optax
import pytest
from flax import nnx

from diffbook import bench, cost


@pytest.fixture(scope="module")
def accelerator_costs():
    """:func:`cost.estimate` of every chapter's accelerator recipe, computed once."""
    return {chapter: cost.estimate(chapter, "accelerator") for chapter in cost.CHAPTERS}


def test_every_accelerator_recipe_fits_a_t4_in_time_and_memory(accelerator_costs):
    for chapter, result in accelerator_costs.items():
        assert result["train_flops"] > 0 and result["sample_flops"] > 0, chapter
        assert 0 < result["minutes_t4"] <= cost.BUDGET_MINUTES, (chapter, result["minutes_t4"])
        for key, device in cost.DEVICES.items():
            limit = cost.MEMORY_SHARE * device.memory / 1e9
            assert result[f"memory_gb_{key}"] <= limit, (chapter, key, result)
            # Every TPU runtime is faster than the T4.
            assert result[f"minutes_{key}"] <= result["minutes_t4"], (chapter, key)


def test_the_minutes_are_the_flops_at_the_stated_rates(accelerator_costs):
    result = accelerator_costs["emoji"]
    stages = result["stages"]
    assert {s["kind"] for s in stages} == {"train", "sample"}
    train = sum(s["flops"] for s in stages if s["kind"] == "train")
    assert train == pytest.approx(result["train_flops"], rel=1e-9)
    total = result["total_flops"]
    for key, device in cost.DEVICES.items():
        assert result[f"minutes_{key}"] == pytest.approx(total / device.rate / 60, abs=0.01)


def test_training_flops_grow_with_the_recipes_steps_and_batch():
    configs = cost.recipes("vae", "accelerator")
    cfg = configs["recipe"]
    base = cost.chapter_stages("vae", configs)
    doubled = cost.chapter_stages("vae", {"recipe": cfg.replace(steps=2 * cfg.steps)})
    train = lambda stages: sum(s.flops for s in stages if s.kind == "train")
    sample = lambda stages: sum(s.flops for s in stages if s.kind == "sample")
    assert train(doubled) == pytest.approx(2 * train(base), rel=1e-9)
    assert sample(doubled) == pytest.approx(sample(base), rel=1e-9)
    # Half the batch: about half the FLOPs of each step (Adam's are the same at any batch).
    halved = cost.chapter_stages("vae", {"recipe": cfg.replace(batch_size=cfg.batch_size // 2)})
    assert train(halved) / train(base) == pytest.approx(0.5, abs=0.02)


def _dense(batch, features=256):
    model = cost.abstract(lambda: nnx.Linear(features, features, rngs=nnx.Rngs(0)))
    optimizer = cost.abstract(lambda: nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param))

    def loss(m, x, key):
        return ((m(x) - x) ** 2).mean()

    x = jax.ShapeDtypeStruct((batch, features), "float32")
    return model, optimizer, loss, x


def test_a_dense_layers_step_costs_its_two_matrix_products():
    # Forward x @ W and the weights' gradient x.T @ dy: 2 * 2 * B * F * F; x needs no gradient.
    b, f = 512, 256
    model, optimizer, loss, x = _dense(b, f)
    stage = cost.train_stage("dense", model, optimizer, loss, x, steps=3)
    assert stage.flops_per_call == pytest.approx(4 * b * f * f, rel=0.05)
    assert stage.flops == 3 * stage.flops_per_call
    call = cost.call_stage("forward", model, lambda m, x: m(x), (x,), calls=7)
    assert call.flops_per_call == pytest.approx(2 * b * f * f, rel=0.05)
    assert call.kind == "sample" and call.batch == b and call.memory_bytes() == 0


def test_activation_memory_is_what_the_backward_pass_reads():
    b, f = 512, 256
    model, optimizer, loss, x = _dense(b, f)
    one = cost.train_stage("dense", model, optimizer, loss, x, steps=1, ema_decay=0.99)
    _, _, _, x2 = _dense(2 * b, f)
    two = cost.train_stage("dense", model, optimizer, loss, x2, steps=1, ema_decay=0.99)
    # The weights' gradient reads the input: at least B * F floats, and linear in B.
    assert one.activation_bytes >= 4 * b * f
    assert two.activation_bytes - one.activation_bytes >= 4 * b * f
    # Weights and bias, held as the parameters, the gradient and the moving average.
    params = 4 * (f * f + f)
    assert one.state_bytes == pytest.approx(3 * params, rel=0.01)
    assert one.memory_bytes(8) == pytest.approx(one.activation_bytes / 8 + one.state_bytes)


def test_bad_arguments_are_refused_by_name():
    model, optimizer, loss, x = _dense(8)
    with pytest.raises(ValueError, match="chapter"):
        cost.estimate("no_such_chapter")
    with pytest.raises(ValueError, match="choice"):
        cost.recipes("ddpm", "gpu")
    with pytest.raises(ValueError, match="steps"):
        cost.train_stage("dense", model, optimizer, loss, x, steps=0)
    with pytest.raises(TypeError, match="optimizer"):
        cost.train_stage("dense", model, None, loss, x, steps=1)
    with pytest.raises(ValueError, match="calls"):
        cost.call_stage("forward", model, lambda m, x: m(x), (x,), calls=0)
    with pytest.raises(ValueError, match="devices"):
        cost.Stage("s", "train", 8, 1, 1.0).memory_bytes(0)
    with pytest.raises(ValueError, match="stages"):
        cost.summarise("vae", "cpu", [])


def test_bench_cost_prints_one_json_line(capsys):
    assert bench.main(["vae", "--config", "cpu", "--cost"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["chapter"] == "vae" and result["config"] == "cpu"
    assert [s["name"] for s in result["stages"]][:2] == ["VAE, latent 16", "VAE, latent 2"]
    assert result["total_flops"] == result["train_flops"] + result["sample_flops"] > 0
    assert result["minutes_t4"] >= result["minutes_tpu_v2_8"] >= 0
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["vae", "--cost", "--train-steps", "10"])
    assert exit_info.value.code == 2
    assert "--cost trains nothing" in capsys.readouterr().err
