"""Every chapter's benchmark: its command line, the JSON line it prints, the samples it saves.

The eight benchmarks run once each, with the smallest settings their options allow, in
one Python process started for them (:func:`runs`): one start of JAX instead of eight,
and what the chapters share (the digits' reference classifier and features, small
compiled programs) is computed once.  Each chapter's tests read the result of its one
run.  The options are tested without training anything, in this process.
"""

import argparse
import json
import math
import re
import runpy
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import fast_compile_env
from diffbook import bench, cost, data

#: The command line of each chapter's run, after ``python -m diffbook.bench CHAPTER
#: --config cpu`` (the CPU recipe everywhere, so that a test means the same on a GPU
#: machine): the fewest training steps (2), and the fewest samples each chapter accepts.
RUNS = {
    "vae": ["--train-steps", "2", "--num-samples", "599"],
    "flow_matching": ["--train-steps", "2", "--num-samples", "59"],
    "ddpm": ["--train-steps", "2", "--sampler", "ddim", "--steps", "5", "--num-samples", "59"],
    "mixture": ["--train-steps", "2", "--sampler", "ode", "--num-samples", "2000"],
    "emoji": ["--train-steps", "2", "--num-emoji", "6", "--guidance", "2.5"],
    # The DiT and classifier guidance: the most code of the chapter in one run.
    "class_conditional": [
        *("--train-steps", "2", "--method", "classifier", "--backbone", "dit"),
        *("--per-digit", "61", "--guidance", "2", "--steps", "2"),
    ],
    "latent": ["--train-steps", "2", "--autoencoder-steps", "2", "--num-emoji", "6"],
    # Distillation: the teacher, its paths (few of them) and the flow-map student.
    "few_step": [
        *("--train-steps", "2", "--method", "distill", "--nfe", "2"),
        *("--path-samples", "64", "--num-samples", "599"),
    ],
}

#: Runs every chapter of ``sys.argv[1]`` (a JSON dict: chapter -> argv) through
#: ``diffbook.bench.main``, each on its own; prints one JSON dict: chapter -> what the
#: run printed on stdout, or the traceback that stopped it.
_RUNNER = """
import contextlib, io, json, sys, traceback
from diffbook.bench import main

results = {}
for chapter, argv in json.loads(sys.argv[1]).items():
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            status = main(argv)
        results[chapter] = {"status": status, "stdout": out.getvalue()}
    except BaseException:  # an exception or argparse's SystemExit: that chapter fails
        results[chapter] = {"error": traceback.format_exc(), "stdout": out.getvalue()}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> dict:
    """Chapter -> ``(report, samples_path)``: what its run of :data:`RUNS` (with
    ``--samples``) printed, or the error that stopped it.

    Only the chapters whose ``test_<chapter>_run_...`` tests were selected run.
    """
    names = [item.name for item in request.session.items]
    chapters = [c for c in RUNS if any(n.startswith(f"test_{c}_run_") for n in names)]
    folder = tmp_path_factory.mktemp("bench")
    paths = {c: folder / f"{c}.{'npy' if c == 'mixture' else 'npz'}" for c in chapters}
    argvs = {c: [c, "--config", "cpu", *RUNS[c], "--samples", str(paths[c])] for c in chapters}
    # Quick compiles, as in the other unit tests (tests/conftest.py): on two cores the seven
    # runs (with 20 training steps then) took 265 s of CPU time at XLA's optimisation level
    # 0 and 393 s at the default.  Level 0 runs the networks several times slower (a
    # class-conditional sampling step took 6 s, a flow-matching training step 0.5 s), hence
    # the fewest steps in RUNS.
    out = subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=1200,
        env=fast_compile_env(),
    )
    assert out.returncode == 0, out.stderr[-5000:]
    reports = json.loads(out.stdout.strip().splitlines()[-1])
    return {c: (reports[c], paths[c]) for c in chapters}


def _result(runs, chapter, keys=()) -> dict:
    """The chapter's one JSON line, checked for the fields every benchmark prints and for
    ``keys``."""
    report, _ = runs[chapter]
    assert "error" not in report, report["error"]
    assert report["status"] == 0
    lines = report["stdout"].strip().splitlines()
    assert len(lines) == 1, report["stdout"]
    result = json.loads(lines[0])
    shared = ("backend", "devices", "params", "batch_size", "compile_s", "train_s", "final_loss")
    missing = [key for key in ("chapter", "config", "steps", *shared, *keys) if key not in result]
    assert not missing, missing
    assert result["chapter"] == chapter and result["config"] == "cpu"
    assert result["backend"] == jax.default_backend() and result["devices"] >= 1
    assert result["params"] > 1000 and result["batch_size"] > 0
    assert result["compile_s"] > 0 and result["train_s"] >= 0  # 2 steps may round to 0.0
    assert math.isfinite(result["final_loss"])
    if "sample_s" in result:
        assert result["sample_s"] > 0
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


# --------------------------------------------------------------- each chapter's run
DIGIT_QUALITY = ("nfe", "fd", "fd_gen", "fd_mem", "copies", "nn_ratio")


def test_vae_run_prints_json_and_saves_samples(runs):
    result = _result(
        runs,
        "vae",
        keys=("held_out_elbo", "eval_s", "sample_s", "class_tv", "class_tv_gen", "class_hist")
        + ("fd", "fd_gen", "fd_mem", "fd_ratio", "copies", "nn_ratio"),
    )
    assert result["steps"] == 2 and result["digit"] is None and result["held_out_elbo"] < 0
    assert result["num_samples"] == result["n_samples"] == 599
    assert len(result["class_hist"]) == 10 and abs(sum(result["class_hist"]) - 1) < 1e-3
    _digit_samples(runs["vae"][1], (599, 8, 8, 1), None)


def test_flow_matching_run_prints_json_and_saves_samples(runs):
    result = _result(
        runs,
        "flow_matching",
        keys=("sample_s", "sample_compile_s", "recognised", "recognised_gen", "recognised_mem")
        + DIGIT_QUALITY,
    )
    # (nfe is counted against real network calls in tests/unit/test_samplers.py.)
    assert result["steps"] == 2 and result["n_held_out"] == 59 and result["digit"] == 2
    assert result["nfe"] > 0 and 0 <= result["recognised"] <= 1
    _digit_samples(runs["flow_matching"][1], (59, 8, 8, 1), 2)


def test_ddpm_run_with_ddim(runs):
    result = _result(runs, "ddpm", keys=("sample_s", "fd_ratio", "recognised") + DIGIT_QUALITY)
    assert result["sampler"] == "ddim" and result["sample_steps"] == 5 and result["nfe"] == 5
    assert result["steps"] == 2 and result["digit"] == 2 and result["num_samples"] == 59
    _digit_samples(runs["ddpm"][1], (59, 8, 8, 1), 2)


def test_mixture_run_prints_json_and_saves_samples(runs):
    result = _result(
        runs,
        "mixture",
        keys=("sample_s", "nfe", "mode_weights", "weight_error", "w1", "w1_ref", "w1_ratio"),
    )
    assert result["steps"] == 2 and result["sampler"] == "ode" and result["nfe"] > 0
    assert len(result["mode_weights"]) == 3 and abs(sum(result["mode_weights"]) - 1) < 1e-3
    assert result["exact_weights"] == [0.3, 0.1, 0.6] and result["num_samples"] == 2000
    assert result["w1"] > 0 and result["w1_ref"] > 0
    samples = np.load(runs["mixture"][1])
    assert samples.shape == (2000,) and samples.dtype == np.float32
    assert np.all(np.isfinite(samples))


def test_emoji_run_prints_json_and_saves_samples(runs):
    result = _result(
        runs,
        "emoji",
        keys=("sample_s", "nfe", "resolution", "num_emoji", "top1", "top5", "distance_ratio")
        + ("top5_conditional", "top5_unconditional", "psnr_median", "prediction"),
    )
    assert result["num_emoji"] == 6 and result["resolution"] == 16 and result["guidance"] == 2.5
    assert result["steps"] == 2 and result["num_samples"] == 6
    assert 0 <= result["top1"] <= result["top5"] <= 1
    assert result["chance_top1"] == pytest.approx(1 / 6, abs=1e-3)
    saved = np.load(runs["emoji"][1])
    _in_range(saved["samples"], (6, 16, 16, 3))
    _in_range(saved["train_images"], (6, 16, 16, 3))
    prompts = list(saved["prompts"])
    assert len(prompts) == 6 and len(set(prompts)) == 6 and all(p.strip() for p in prompts)


def test_class_conditional_run_saves_labelled_samples(runs):
    result = _result(
        runs,
        "class_conditional",
        keys=("sample_s", "nfe", "accuracy", "accuracy_gen", "fd", "fd_gen", "nn_ratio"),
    )
    assert result["method"] == "classifier" and result["backbone"] == "dit"
    assert result["steps"] == 2 and result["guidance"] == 2.0 and result["nfe"] == 2
    # train_s covers the classifier's training too.
    assert result["train_s"] >= result["classifier_s"] >= 0 and result["num_samples"] == 610
    saved = np.load(runs["class_conditional"][1])
    _in_range(saved["samples"], (610, 8, 8, 1))
    np.testing.assert_array_equal(saved["labels"], np.repeat(np.arange(10), 61))
    np.testing.assert_array_equal(saved["train_indices"], data.split_indices("train"))


def test_latent_run_trains_both_stages_and_saves_decoded_samples(runs):
    result = _result(
        runs,
        "latent",
        keys=("autoencoder_s", "autoencoder_compile_s", "diffusion_s", "sample_s", "resolution")
        + ("latent_shape", "num_emoji", "latent_scale", "recon_psnr_median", "recon_top5")
        + ("psnr_median", "top1", "top5", "top1_unconditional", "top5_unconditional"),
    )
    assert result["resolution"] == 32 and result["latent_shape"] == [8, 8, 4]
    assert result["num_emoji"] == 6 and result["autoencoder_steps"] == 2 and result["steps"] == 2
    # compile_s and train_s cover both stages.
    assert result["train_s"] == pytest.approx(
        result["autoencoder_s"] + result["diffusion_s"], abs=0.02
    )
    assert result["compile_s"] >= result["autoencoder_compile_s"] > 0
    assert result["latent_scale"] > 0 and result["autoencoder_params"] > 0
    saved = np.load(runs["latent"][1])
    _in_range(saved["samples"], (6, 32, 32, 3))
    _in_range(saved["train_images"], (6, 32, 32, 3))
    assert list(saved["prompts"]) == list(saved["train_prompts"])
    assert len(set(saved["prompts"])) == 6


def test_few_step_run_distils_the_teacher_and_saves_samples(runs):
    result = _result(
        runs,
        "few_step",
        keys=("sample_s", "fd_ratio", "class_tv", "teacher_s", "paths_s", "student_s")
        + DIGIT_QUALITY,
    )
    assert result["method"] == "distill" and result["solver"] is None and result["nfe"] == 2
    assert result["steps"] == result["teacher_steps"] == 2 and result["path_samples"] == 64
    assert result["digit"] is None and result["num_samples"] == result["n_samples"] == 599
    # train_s covers the teacher, its paths and the student.
    assert result["train_s"] == pytest.approx(
        result["teacher_s"] + result["paths_s"] + result["student_s"], abs=0.03
    )
    assert result["paths_s"] > 0 and result["fd"] > 0 and 0 <= result["class_tv"] <= 1
    _digit_samples(runs["few_step"][1], (599, 8, 8, 1), None)


# --------------------------------------------------- the command line, nothing trained
def test_every_chapter_has_a_benchmark_and_a_cost():
    assert set(bench.BENCHMARKS) == set(cost.CHAPTERS) == set(RUNS)
    for chapter, module in bench.BENCHMARKS.items():
        for name in ("add_arguments", "check", "run"):
            assert callable(getattr(module, name)), (chapter, name)
        assert module.__doc__ and f"diffbook.bench {chapter}" in module.__doc__


def test_python_m_diffbook_bench_help_names_every_chapter(capsys, monkeypatch):
    # What `python -m diffbook.bench --help` runs (the package's __main__), without
    # starting a new Python.
    monkeypatch.setattr(sys, "argv", ["python -m diffbook.bench", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("diffbook.bench", run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m diffbook.bench")
    for chapter in bench.BENCHMARKS:
        assert chapter in out


@pytest.mark.parametrize("chapter", sorted(bench.BENCHMARKS))
def test_each_chapters_help_describes_it_and_lists_its_options(chapter, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main([chapter, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    module = bench.BENCHMARKS[chapter]
    assert module.__doc__.splitlines()[0] in text
    own = argparse.ArgumentParser()
    module.add_arguments(own)
    options = set(re.findall(r"--[a-z][\w-]*", own.format_usage())) - {"--help"}
    assert options
    for option in (*options, "--samples", "--config", "--seed", "--train-steps", "--cost"):
        assert option in text, option


@pytest.fixture
def no_training(monkeypatch):
    """Every chapter's ``run`` replaced by a failure: a refused command line must stop
    before anything trains."""

    def trained(args):
        raise AssertionError(f"the {args.chapter} benchmark started training")

    for module in bench.BENCHMARKS.values():
        monkeypatch.setattr(module, "run", trained)


def _rejected(capsys, *argv: str) -> str:
    """The bench's command line, run in this process on ``argv``, must refuse it (exit
    status 2, as argparse does for a usage error); returns its error message (the usage
    line above it, which names every option, left out)."""
    with pytest.raises(SystemExit) as exit_info:
        bench.main(list(argv))
    assert exit_info.value.code == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m diffbook.bench") and ": error: " in err, err
    return err.split(": error: ", 1)[1]


def test_bench_rejects_unknown_chapters(capsys, no_training):
    assert "invalid choice" in _rejected(capsys, "no_such_chapter")


def test_digit_benches_need_as_many_samples_as_held_out_images(capsys, no_training):
    for chapter, needed in (("vae", 599), ("ddpm", 59), ("flow_matching", 59), ("few_step", 599)):
        err = _rejected(capsys, chapter, "--num-samples", str(needed - 1))
        assert f"--num-samples must be at least {needed}" in err, err


def test_bench_rejects_counts_below_their_minimum(capsys, no_training):
    for options, name in (
        (("flow_matching", "--train-steps", "1"), "--train-steps"),
        (("mixture", "--num-samples", "0"), "--num-samples"),
        (("emoji", "--num-emoji", "5"), "--num-emoji"),
        (("latent", "--num-emoji", "5"), "--num-emoji"),
        (("latent", "--autoencoder-steps", "1"), "--autoencoder-steps"),
        (("vae", "--seed", "-1"), "--seed"),
        (("ddpm", "--steps", "0"), "--steps"),
        (("class_conditional", "--per-digit", "60"), "--per-digit"),
        (("few_step", "--nfe", "0"), "--nfe"),
        (("few_step", "--path-samples", "0"), "--path-samples"),
    ):
        err = _rejected(capsys, *options)
        assert f"argument {name}: must be an int >=" in err, err


@pytest.mark.parametrize("chapter", ["emoji", "class_conditional", "latent"])
def test_guided_benches_reject_a_bad_guidance_scale(chapter, capsys, no_training):
    for scale in ("-1", "nan", "inf"):
        assert "--guidance" in _rejected(capsys, chapter, "--guidance", scale)


def test_ddpm_bench_rejects_steps_its_sampler_cannot_take(capsys, no_training):
    err = _rejected(capsys, "ddpm", "--sampler", "ddpm", "--steps", "50")
    assert "--steps" in err and "--sampler ddim" in err
    assert "--steps must be in 1..1000" in _rejected(
        capsys, "ddpm", "--sampler", "ddim", "--steps", "1001"
    )


def test_class_conditional_bench_rejects_bad_options(capsys, no_training):
    for options in (
        ["--method", "ddpm"],
        ["--backbone", "resnet"],
        ["--per-digit", "10"],
        ["--steps", "0"],
        ["--steps", "1001"],
    ):
        err = _rejected(capsys, "class_conditional", *options)
        assert options[0] in err, err


def test_few_step_bench_rejects_bad_options(capsys, no_training):
    assert "invalid choice" in _rejected(capsys, "few_step", "--method", "ddpm")
    assert "invalid choice" in _rejected(capsys, "few_step", "--solver", "rk4")
    for options, name in (
        # A flow map jumps: it takes no solver.
        (["--method", "distill", "--solver", "euler"], "--solver"),
        (["--method", "meanflow", "--solver", "heun", "--nfe", "2"], "--solver"),
        # Two evaluations a step.
        (["--method", "teacher", "--solver", "heun", "--nfe", "3"], "--nfe"),
        (["--method", "reflow", "--solver", "midpoint", "--nfe", "1"], "--nfe"),
        (["--method", "teacher", "--solver", "adaptive", "--nfe", "4"], "--nfe"),
        (["--method", "meanflow", "--path-samples", "64"], "--path-samples"),
    ):
        err = _rejected(capsys, "few_step", *options)
        assert name in err, (options, err)


def test_cost_refuses_the_options_of_a_training_run(capsys, no_training):
    for options in (["--samples", "x.npz"], ["--train-steps", "10"]):
        assert "--cost trains nothing" in _rejected(capsys, "ddpm", "--cost", *options)
