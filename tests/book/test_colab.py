"""Colab: every chapter opens from a badge and installs what is missing, only then."""

import importlib.metadata
import importlib.util
import json
import re
import subprocess
import types
from pathlib import Path

import jupytext
import pytest
import yaml

import diffbook

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = sorted(p for p in (ROOT / "notebooks").glob("*.md") if p.name != "README.md")
REPO = re.search(r"url:\s*https://github.com/(\S+)", (ROOT / "_config.yml").read_text()).group(1)


def _install_cell(md: Path) -> str:
    code = [c.source for c in jupytext.read(md).cells if c.cell_type == "code"]
    assert "def main(" in code[0], f"{md.name}: the install cell must come first"
    return code[0]


def _pins() -> dict:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_install_cell_does_nothing_where_diffbook_is_importable(md, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    exec(_install_cell(md), {})
    assert calls == []
    assert capsys.readouterr().out == "diffbook is already importable: nothing to install.\n"


def _record(calls, tag_exists=True):
    """A fake subprocess.run: records each command; ``git ls-remote`` finds the tag or not."""

    def run(args, **kwargs):
        calls.append(args)
        return types.SimpleNamespace(returncode=0 if tag_exists or args[0] != "git" else 2)

    return run


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
@pytest.mark.parametrize("jax_version", [None, "0.4.30"], ids=["no-jax", "old-jax"])
def test_install_cell_installs_jax_for_this_hardware_and_the_pins(
    md, jax_version, monkeypatch, capsys
):
    from diffbook import colab_install

    calls = []
    real_spec, real_version = importlib.util.find_spec, importlib.metadata.version

    def version(name):
        if name not in ("jax", "jaxlib"):
            return real_version(name)
        if jax_version is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return jax_version

    monkeypatch.delenv("DIFFBOOK_INSTALL_SOURCE", raising=False)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "diffbook" else real_spec(name, *a),
    )
    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(subprocess, "run", _record(calls))
    hardware = colab_install.detect_hardware()  # whatever this machine has
    exec(_install_cell(md), {})
    git, *pip = calls
    assert git[:2] == ["git", "ls-remote"] and git[-1] == f"refs/tags/v{diffbook.__version__}"
    assert all(args[1:3] == ["-m", "pip"] for args in pip)
    args = pip[-1]  # an uninstall of another build's plugins may come first
    assert args[3:5] == ["install", "-q"]
    pins = _pins()
    jax_args = [a for a in args[5:] if a.startswith("jax")]
    extra = {"tpu": "[tpu]", "cpu": ""}.get(hardware, "[cuda1")
    assert jax_args[0].startswith(f"jax{extra}") and jax_args[0].endswith(f"=={pins['jax']}")
    for arg in args[5:-1]:  # every pinned package matches requirements.txt
        name, version = arg.split("==")
        assert pins[re.sub(r"\[.*\]", "", name).lower()] == version, arg
    assert {"flax", "orbax-checkpoint", "lineax", "equinox"} <= {
        a.split("==")[0] for a in args[5:-1]
    }
    assert args[-1] == f"diffbook @ git+https://github.com/{REPO}@v{diffbook.__version__}"
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"Installed {jax_args[0]}"), out
    assert f" diffbook came from https://github.com/{REPO} at tag v{diffbook.__version__}." in out


def test_install_cell_takes_the_branch_while_the_version_has_no_tag(monkeypatch, capsys):
    calls = []
    real_spec = importlib.util.find_spec
    monkeypatch.delenv("DIFFBOOK_INSTALL_SOURCE", raising=False)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "diffbook" else real_spec(name, *a),
    )
    monkeypatch.setattr(subprocess, "run", _record(calls, tag_exists=False))
    exec(_install_cell(CHAPTERS[0]), {})
    assert calls[-1][-1] == f"diffbook @ git+https://github.com/{REPO}@main"
    out = capsys.readouterr().out
    assert f"at branch main, as it has no tag v{diffbook.__version__}" in out


def test_install_cell_takes_diffbook_from_a_local_folder(monkeypatch, tmp_path, capsys):
    calls = []
    real_spec = importlib.util.find_spec
    monkeypatch.setenv("DIFFBOOK_INSTALL_SOURCE", str(tmp_path))
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "diffbook" else real_spec(name, *a),
    )
    monkeypatch.setattr(subprocess, "run", _record(calls))
    exec(_install_cell(CHAPTERS[0]), {})
    # one pip call and no git call: the folder is the source
    assert len(calls) == 1 and calls[0][3] == "install" and calls[0][-1] == str(tmp_path)
    # The jax installed here (0.10.x) is recent enough: JAX is left alone, and pinned at
    # the installed version, jaxlib too, so no package of the call can move it.
    jax_args = [a for a in calls[0][4:] if a.startswith("jax")]
    assert jax_args == [
        f"jax=={importlib.metadata.version('jax')}",
        f"jaxlib=={importlib.metadata.version('jaxlib')}",
    ]
    assert "kept jax" in capsys.readouterr().out


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_has_a_colab_badge_for_its_own_notebook(md):
    url = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{md.stem}.ipynb"
    assert url in md.read_text()
    assert (ROOT / "notebooks" / f"{md.stem}.ipynb").exists()


def _launch_urls(page: str) -> list[str]:
    """The launch buttons' links of one page, as the book's theme builds them from
    _config.yml (the same calls that `jupyter-book build` makes, without the build)."""
    from types import SimpleNamespace

    from jupyter_book.config import get_final_config
    from sphinx_book_theme.header_buttons import update_context_with_repository_info
    from sphinx_book_theme.header_buttons.launch import add_launch_buttons

    class Config(dict):
        __getattr__ = dict.__getitem__

    sphinx, _ = get_final_config(
        user_yaml=ROOT / "_config.yml", sourcedir=ROOT, cli_config={"latex_individualpages": False}
    )
    metadata = json.loads((ROOT / f"{page}.ipynb").read_text())["metadata"]
    app = SimpleNamespace(
        config=Config(html_context={}, html_theme_options=sphinx["html_theme_options"]),
        builder=None,
        env=SimpleNamespace(
            doc2path=lambda name: str(ROOT / f"{name}.ipynb"), metadata={page: metadata}
        ),
    )
    update_context_with_repository_info(app)
    context = dict(
        app.config.html_context, pagename=page, sourcename=f"{page}.ipynb", header_buttons=[]
    )
    add_launch_buttons(app, page, "page.html", context, None)
    return [b["url"] for group in context["header_buttons"] for b in group["buttons"]]


def test_each_chapter_page_launches_the_notebook_of_its_badge():
    # The page's launch button and the badge inside the chapter must open the same,
    # existing notebook (a missing `branch:` in _config.yml, say, makes the theme
    # link to "master").
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [
        c["file"]
        for part in toc["parts"]
        for c in part["chapters"]
        if c["file"].startswith("notebooks/")
    ]
    assert sorted(pages) == [f"notebooks/{md.stem}" for md in CHAPTERS]
    for page in pages:
        badges = set(
            re.findall(
                r"https://colab\.research\.google\.com/github/[^\s()\[\]]+?\.ipynb",
                (ROOT / f"{page}.md").read_text(),
            )
        )
        assert len(badges) == 1, (page, badges)
        assert _launch_urls(page) == list(badges), page
