"""Every chapter's benchmark runs headless, prints one JSON line and saves its samples."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import fast_compile_env
from diffbook import bench, data


def _bench(chapter, *options, keys=()):
    """Run ``python -m diffbook.bench CHAPTER OPTIONS``; its one JSON line, checked for ``keys``."""
    # The CPU recipe everywhere, so that the test means the same on a GPU machine.
    out = subprocess.run(
        [sys.executable, "-m", "diffbook.bench", chapter, "--config", "cpu", *options],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        env=fast_compile_env(),
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout
    result = json.loads(lines[0])
    missing = [
        key
        for key in ("chapter", "config", "compile_s", "train_s", "steps", *keys)
        if key not in result
    ]
    assert not missing, missing
    assert result["chapter"] == chapter and result["config"] == "cpu"
    return result


def _in_range(samples, shape):
    assert samples.shape == shape and samples.dtype == np.float32
    assert -1.0 <= samples.min() <= samples.max() <= 1.0


def _digit_samples(path, shape, digit):
    """The saved digits and the indices of the images the model trained on."""
    saved = np.load(path)
    _in_range(saved["samples"], shape)
    np.testing.assert_array_equal(saved["train_indices"], data.split_indices("train", digit))
    assert not set(saved["train_indices"]) & set(data.split_indices("held_out"))


def test_flow_matching_bench_prints_json_and_saves_samples(tmp_path):
    path = tmp_path / "samples.npz"
    result = _bench(
        "flow_matching",
        "--train-steps",
        "20",
        "--num-samples",
        "100",
        "--samples",
        str(path),
        keys=(
            "sample_s",
            "params",
            "nfe",
            "recognised",
            "recognised_gen",
            "recognised_mem",
            "fd",
            "fd_gen",
            "fd_mem",
            "copies",
            "nn_ratio",
        ),
    )
    # (nfe is counted against real network calls in tests/unit/test_samplers.py.)
    assert result["steps"] == 20 and result["n_held_out"] == 59
    _digit_samples(path, (100, 8, 8, 1), 2)


def _rejected(capsys, *argv: str) -> str:
    """The bench's command line, run in this process on ``argv``, must refuse it (exit
    status 2, as argparse does for a usage error); returns what it wrote to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        bench.main(list(argv))
    assert exit_info.value.code == 2, argv
    return capsys.readouterr().err


def test_bench_rejects_unknown_chapters(capsys):
    assert "invalid choice" in _rejected(capsys, "no_such_chapter")


def test_ddpm_bench_with_ddim(tmp_path):
    path = tmp_path / "samples.npz"
    result = _bench(
        "ddpm",
        "--train-steps",
        "20",
        "--sampler",
        "ddim",
        "--steps",
        "5",
        "--num-samples",
        "96",
        "--samples",
        str(path),
        keys=("fd_ratio",),
    )
    assert result["sampler"] == "ddim" and result["sample_steps"] == 5 and result["nfe"] == 5
    assert result["digit"] == 2
    _digit_samples(path, (96, 8, 8, 1), 2)


def test_vae_bench_prints_json_and_saves_samples(tmp_path):
    path = tmp_path / "vae_samples.npz"
    result = _bench(
        "vae",
        "--train-steps",
        "20",
        "--samples",
        str(path),
        keys=(
            "held_out_elbo",
            "params",
            "class_tv",
            "class_tv_gen",
            "class_hist",
            "fd",
            "fd_gen",
            "fd_mem",
            "fd_ratio",
            "copies",
            "nn_ratio",
        ),
    )
    assert result["steps"] == 20 and result["digit"] is None and result["held_out_elbo"] < 0
    _digit_samples(path, (1000, 8, 8, 1), None)


def test_vae_bench_needs_enough_samples(capsys):
    for chapter, needed in (("vae", 599), ("ddpm", 59), ("flow_matching", 59)):
        assert f"at least {needed}" in _rejected(capsys, chapter, "--num-samples", str(needed - 1))


def test_mixture_bench_prints_json_and_saves_samples(tmp_path):
    path = tmp_path / "mixture.npy"
    result = _bench(
        "mixture",
        "--train-steps",
        "50",
        "--sampler",
        "ode",
        "--samples",
        str(path),
        keys=("sample_s", "nfe", "mode_weights", "weight_error", "w1", "w1_ref", "w1_ratio"),
    )
    assert result["steps"] == 50 and result["sampler"] == "ode"
    assert len(result["mode_weights"]) == 3 and abs(sum(result["mode_weights"]) - 1) < 1e-3
    samples = np.load(path)
    assert samples.shape == (10_000,) and samples.dtype == np.float32
    assert np.all(np.isfinite(samples))


def test_emoji_bench_prints_json_and_saves_samples(tmp_path):
    path = tmp_path / "emoji.npz"
    result = _bench(
        "emoji",
        "--train-steps",
        "4",
        "--num-emoji",
        "12",
        "--guidance",
        "2.5",
        "--samples",
        str(path),
        keys=(
            "sample_s",
            "nfe",
            "resolution",
            "num_emoji",
            "top1",
            "top5",
            "distance_ratio",
            "top5_conditional",
            "top5_unconditional",
            "psnr_median",
        ),
    )
    assert result["num_emoji"] == 12 and result["resolution"] == 16 and result["guidance"] == 2.5
    saved = np.load(path)
    _in_range(saved["samples"], (12, 16, 16, 3))
    _in_range(saved["train_images"], (12, 16, 16, 3))
    prompts = list(saved["prompts"])
    assert len(prompts) == 12 and len(set(prompts)) == 12 and all(p.strip() for p in prompts)


def test_emoji_bench_rejects_a_negative_guidance_scale(capsys):
    assert "--guidance" in _rejected(capsys, "emoji", "--guidance", "-1")


def test_bench_rejects_counts_below_their_minimum(capsys):
    for options, name in (
        (("flow_matching", "--train-steps", "1"), "--train-steps"),
        (("mixture", "--num-samples", "0"), "--num-samples"),
        (("emoji", "--num-emoji", "5"), "--num-emoji"),
        (("vae", "--seed", "-1"), "--seed"),
    ):
        err = _rejected(capsys, *options)
        assert f"argument {name}: must be an int >=" in err, err


def test_class_conditional_bench_saves_labelled_samples(tmp_path):
    path = tmp_path / "samples.npz"
    result = _bench(
        "class_conditional",
        "--train-steps",
        "4",
        "--method",
        "classifier",
        "--backbone",
        "dit",
        "--per-digit",
        "61",
        "--guidance",
        "2",
        "--steps",
        "5",
        "--samples",
        str(path),
        keys=("sample_s", "nfe", "accuracy", "accuracy_gen", "fd", "fd_gen", "nn_ratio"),
    )
    assert result["method"] == "classifier" and result["backbone"] == "dit"
    assert result["steps"] == 4 and result["guidance"] == 2.0
    assert result["nfe"] == 5
    saved = np.load(path)
    _in_range(saved["samples"], (610, 8, 8, 1))
    np.testing.assert_array_equal(saved["labels"], np.repeat(np.arange(10), 61))
    np.testing.assert_array_equal(saved["train_indices"], data.split_indices("train"))


def test_class_conditional_bench_rejects_bad_options(capsys):
    for options in (
        ["--method", "ddpm"],
        ["--backbone", "resnet"],
        ["--guidance", "-1"],
        ["--guidance", "nan"],
        ["--per-digit", "10"],
        ["--steps", "0"],
    ):
        err = _rejected(capsys, "class_conditional", *options)
        assert options[0] in err, err


def test_latent_bench_trains_both_stages_and_saves_decoded_samples(tmp_path):
    path = tmp_path / "latent.npz"
    result = _bench(
        "latent",
        "--train-steps",
        "3",
        "--autoencoder-steps",
        "3",
        "--num-emoji",
        "8",
        "--samples",
        str(path),
        keys=(
            "autoencoder_s",
            "sample_s",
            "resolution",
            "latent_shape",
            "num_emoji",
            "latent_scale",
            "recon_psnr_median",
            "recon_top5",
            "psnr_median",
            "top1",
            "top5",
            "top5_unconditional",
        ),
    )
    assert result["resolution"] == 32 and result["latent_shape"] == [8, 8, 4]
    assert result["num_emoji"] == 8 and result["autoencoder_steps"] == 3
    # train_s covers both stages.
    assert result["train_s"] >= result["autoencoder_s"] > 0
    saved = np.load(path)
    _in_range(saved["samples"], (8, 32, 32, 3))
    _in_range(saved["train_images"], (8, 32, 32, 3))
    assert list(saved["prompts"]) == list(saved["train_prompts"])
    assert len(set(saved["prompts"])) == 8
