import json
import subprocess
import sys

import numpy as np


def test_flow_matching_bench_prints_json_and_saves_samples(tmp_path):
    path = tmp_path / "samples.npy"
    out = subprocess.run([sys.executable, "-m", "diffbook.bench", "flow_matching", "--train-steps", "20",
                          "--num-samples", "100", "--samples", str(path)],
                         capture_output=True, text=True, check=True, timeout=600)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("compile_s", "train_s", "sample_s", "steps", "params", "nfe", "recognised",
                "recognised_ref", "fd", "fd_ref", "copies"):
        assert key in result, key
    assert result["steps"] == 20 and result["config"] == "cpu" and result["nfe"] > 0
    samples = np.load(path)
    assert samples.shape == (100, 8, 8, 1) and samples.dtype == np.float32
    assert samples.min() >= -1.0 and samples.max() <= 1.0


def test_bench_rejects_unknown_chapters():
    out = subprocess.run([sys.executable, "-m", "diffbook.bench", "no_such_chapter"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_ddpm_bench_with_ddim(tmp_path):
    path = tmp_path / "samples.npy"
    out = subprocess.run([sys.executable, "-m", "diffbook.bench", "ddpm", "--train-steps", "20",
                          "--sampler", "ddim", "--steps", "5", "--num-samples", "96",
                          "--samples", str(path)],
                         capture_output=True, text=True, check=True, timeout=600)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["sampler"] == "ddim" and result["sample_steps"] == 5 and result["nfe"] == 5
    assert result["digit"] == 2 and "fd_ratio" in result and "train_s" in result
    samples = np.load(path)
    assert samples.shape == (96, 8, 8, 1) and -1.0 <= samples.min() <= samples.max() <= 1.0


def test_vae_bench_prints_json_and_saves_samples(tmp_path):
    path = tmp_path / "vae_samples.npy"
    out = subprocess.run([sys.executable, "-m", "diffbook.bench", "vae", "--train-steps", "20",
                          "--samples", str(path)],
                         capture_output=True, text=True, check=True, timeout=600)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("compile_s", "train_s", "test_elbo", "params", "class_tv", "class_tv_ref",
                "class_hist", "fd", "fd_ref", "fd_ratio", "copies", "nn_ratio"):
        assert key in result, key
    assert result["chapter"] == "vae" and result["steps"] == 20 and result["digit"] is None
    assert result["test_elbo"] < 0
    samples = np.load(path)
    assert samples.shape == (1000, 8, 8, 1) and samples.dtype == np.float32
    assert samples.min() >= -1.0 and samples.max() <= 1.0


def test_vae_bench_needs_enough_samples():
    out = subprocess.run([sys.executable, "-m", "diffbook.bench", "vae", "--num-samples", "100"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "at least 899" in out.stderr


def test_mixture_bench_prints_json_and_saves_samples(tmp_path):
    path = tmp_path / "mixture.npy"
    out = subprocess.run([sys.executable, "-m", "diffbook.bench", "mixture", "--train-steps", "50",
                          "--sampler", "ode", "--samples", str(path)],
                         capture_output=True, text=True, check=True, timeout=600)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("compile_s", "train_s", "sample_s", "nfe", "mode_weights", "weight_error",
                "w1", "w1_ref", "w1_ratio"):
        assert key in result, key
    assert result["chapter"] == "mixture" and result["steps"] == 50 and result["sampler"] == "ode"
    assert len(result["mode_weights"]) == 3 and abs(sum(result["mode_weights"]) - 1) < 1e-3
    samples = np.load(path)
    assert samples.shape == (10_000,) and samples.dtype == np.float32
    assert np.all(np.isfinite(samples))
