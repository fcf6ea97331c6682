import jax
import pytest

from diffbook import config


def test_pick_follows_backend_and_override(monkeypatch):
    monkeypatch.delenv("DIFFBOOK_CONFIG", raising=False)
    backend = jax.default_backend()
    expected = "cpu" if backend == "cpu" else "accelerator"  # passes on a GPU machine too
    cfg = config.pick({"cpu": {"n": 1}, "accelerator": {"n": 2}})
    assert cfg.name == config.default_choice() == expected
    assert cfg.n == {"cpu": 1, "accelerator": 2}[expected]
    assert f"{backend} device" in config.describe(cfg)
    # Whatever this machine has: a GPU or TPU backend picks the accelerator recipe ...
    for other, choice in [("gpu", "accelerator"), ("tpu", "accelerator"), ("cpu", "cpu")]:
        monkeypatch.setattr(jax, "default_backend", lambda other=other: other)
        assert config.default_choice() == choice
        assert config.pick({"cpu": {"n": 1}, "accelerator": {"n": 2}}).name == choice
    monkeypatch.undo()
    # ... and the argument or $DIFFBOOK_CONFIG overrides the backend.
    assert config.pick({"cpu": {"n": 1}, "accelerator": {"n": 2}}, choice="accelerator").n == 2
    assert config.pick({"cpu": {"n": 1}, "accelerator": {"n": 2}}, choice="cpu").n == 1
    monkeypatch.setenv("DIFFBOOK_CONFIG", "accelerator")
    assert config.pick({"cpu": {"n": 1}, "accelerator": {"n": 2}}).name == "accelerator"
    monkeypatch.setenv("DIFFBOOK_CONFIG", "cpu")
    assert config.pick({"cpu": {"n": 1}, "accelerator": {"n": 2}}).name == "cpu"


def test_pick_rejects_bad_settings():
    with pytest.raises(ValueError, match="same keys"):
        config.pick({"cpu": {"n": 1}, "accelerator": {"m": 2}})
    with pytest.raises(ValueError, match="choice"):
        config.pick({"cpu": {"n": 1}, "accelerator": {"n": 2}}, choice="tpu")


def test_replace_and_missing_keys():
    cfg = config.pick({"cpu": {"n": 1}, "accelerator": {"n": 2}}, choice="cpu")
    assert cfg.replace(n=5).n == 5 and cfg.n == 1
    with pytest.raises(KeyError):
        cfg.replace(m=1)
    with pytest.raises(AttributeError, match="no setting 'm'"):
        cfg.m


def test_checkpoint_dir_follows_the_environment(monkeypatch, tmp_path):
    cfg = config.pick({"cpu": {"n": 1}, "accelerator": {"n": 2}}, choice="cpu")
    monkeypatch.delenv("DIFFBOOK_CHECKPOINTS", raising=False)
    assert config.checkpoint_dir("ddpm", cfg) is None
    monkeypatch.setenv("DIFFBOOK_CHECKPOINTS", str(tmp_path))
    assert config.checkpoint_dir("ddpm", cfg) == tmp_path / "ddpm-cpu"
    with pytest.raises(ValueError, match="run"):
        config.checkpoint_dir("a/b", cfg)


@pytest.mark.parametrize(
    "hardware, cuda, capability, fix",
    [
        ("gpu", 12, (8, 0), "jax[cuda12]=="),
        ("gpu", 13, (7, 5), "jax[cuda13]=="),
        # A V100 or P100 under a CUDA 13 driver, or a GPU whose capability is unknown:
        # the advice is the CUDA 12 build, as the install cell's choice.
        ("gpu", 13, (7, 0), "jax[cuda12]=="),
        ("gpu", 13, (6, 0), "jax[cuda12]=="),
        ("gpu", 13, None, "jax[cuda12]=="),
        ("tpu", None, None, "jax[tpu]=="),
    ],
)
def test_describe_warns_when_an_accelerator_is_attached_but_jax_runs_on_the_cpu(
    monkeypatch, hardware, cuda, capability, fix
):
    from diffbook import colab_install

    monkeypatch.setattr(colab_install, "detect_hardware", lambda: hardware)
    monkeypatch.setattr(colab_install, "driver_cuda_major", lambda: cuda)
    monkeypatch.setattr(colab_install, "gpu_compute_capability", lambda: capability)
    monkeypatch.setattr(colab_install, "installed_jax_packages", lambda: {"jax": "0.10.2"})
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    cfg = config.pick({"cpu": {"n": 1}, "accelerator": {"n": 2}}, choice="cpu")
    warning, line = config.describe(cfg).split("\n")
    assert warning.startswith("WARNING:") and "runs on the CPU" in warning
    assert "Restart session" in warning and f'pip install "{fix}{jax.__version__}"' in warning
    assert "uninstall" not in warning
    assert line.startswith("configuration 'cpu' on ")


def test_the_warning_names_the_other_builds_plugins_to_uninstall(monkeypatch):
    from diffbook import colab_install

    monkeypatch.setattr(colab_install, "detect_hardware", lambda: "gpu")
    monkeypatch.setattr(colab_install, "driver_cuda_major", lambda: 13)
    monkeypatch.setattr(colab_install, "gpu_compute_capability", lambda: (7, 0))
    plugins = {"jax": "0.10.2", "jax-cuda13-plugin": "0.10.2", "jax-cuda13-pjrt": "0.10.2"}
    monkeypatch.setattr(colab_install, "installed_jax_packages", lambda: plugins)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    warning = config.accelerator_warning()
    assert (
        "pip uninstall -y jax-cuda13-plugin jax-cuda13-pjrt, then "
        f'pip install "jax[cuda12]=={jax.__version__}", and restart again.'
    ) in warning


@pytest.mark.parametrize("hardware, backend", [("cpu", "cpu"), ("gpu", "gpu"), ("tpu", "tpu")])
def test_describe_stays_one_line_when_jax_uses_what_is_attached(monkeypatch, hardware, backend):
    from diffbook import colab_install

    monkeypatch.setattr(colab_install, "detect_hardware", lambda: hardware)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    cfg = config.pick({"cpu": {"n": 1}, "accelerator": {"n": 2}}, choice="cpu")
    assert config.accelerator_warning() is None
    assert "\n" not in config.describe(cfg) and "WARNING" not in config.describe(cfg)
    with pytest.raises(TypeError, match="config"):
        config.describe({"n": 1})


SMOKY = {
    "cpu": {"steps": 100, "warmup": 10, "num_samples": 64, "resolution": 16},
    "accelerator": {"steps": 1000, "warmup": 50, "num_samples": 512, "resolution": 32},
    "smoke": {"steps": 4, "warmup": 1, "num_samples": 8},
}


def test_a_smoke_run_cuts_only_the_counts_the_recipe_names(monkeypatch):
    monkeypatch.delenv("DIFFBOOK_SMOKE", raising=False)
    assert config.pick(SMOKY, choice="accelerator") == SMOKY["accelerator"]
    assert not config.pick(SMOKY, choice="accelerator").smoke
    monkeypatch.setenv("DIFFBOOK_SMOKE", "0")
    assert not config.smoke_run()
    monkeypatch.setenv("DIFFBOOK_SMOKE", "1")
    cfg = config.pick(SMOKY, choice="accelerator")
    assert cfg.smoke and cfg.name == "accelerator"
    assert (cfg.steps, cfg.warmup, cfg.num_samples, cfg.resolution) == (4, 1, 8, 32)
    assert cfg.replace(steps=2).smoke  # a changed copy is still a smoke run
    assert "SMOKE RUN" in config.describe(cfg)


@pytest.mark.parametrize(
    "smoke, match",
    [
        ({"resolution": 8}, "only counts"),  # not a count: the data would change
        ({"steps": 200}, "must cut"),  # raises the CPU recipe's count
        ({"epochs": 1}, "not one of its settings"),
        ({"steps": 0.5}, "smoke setting 'steps'"),
    ],
)
def test_a_smoke_entry_that_is_not_a_cut_count_is_refused(smoke, match):
    recipe = {**SMOKY, "smoke": smoke}
    with pytest.raises((ValueError, TypeError), match=match):
        config.pick(recipe, choice="cpu")


def test_expect_stops_the_cpu_recipe_and_only_reports_elsewhere(monkeypatch, capsys):
    monkeypatch.delenv("DIFFBOOK_SMOKE", raising=False)
    cpu = config.pick(SMOKY, choice="cpu")
    assert config.expect(cpu, True, "fine") is None  # shows nothing on a cell's last line
    with pytest.raises(AssertionError, match="ratio 0.5 above 0.8"):
        config.expect(cpu, 0.5 > 0.8, "ratio 0.5 above 0.8")
    assert capsys.readouterr().out == ""
    accelerator = config.pick(SMOKY, choice="accelerator")
    config.expect(accelerator, False, "ratio 0.5 above 0.8")
    assert "configuration 'accelerator'" in capsys.readouterr().out
    monkeypatch.setenv("DIFFBOOK_SMOKE", "1")
    smoky_cpu = config.pick(SMOKY, choice="cpu")
    config.expect(smoky_cpu, False, "ratio 0.5 above 0.8")
    assert "smoke run" in capsys.readouterr().out
    with pytest.raises(TypeError, match="claim"):
        config.expect(cpu, True, 3)
