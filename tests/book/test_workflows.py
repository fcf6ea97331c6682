"""The GitHub workflows: CI runs .ci/run, the book is published from main, and the README
points at both, all derived from the repository named in _config.yml."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
REPO = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].removeprefix(
    "https://github.com/"
)


def _workflow(name):
    wf = yaml.safe_load((WORKFLOWS / name).read_text())
    return wf, wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as True


def _steps(job):
    return {step.get("uses", "").split("@")[0] or step.get("run"): step for step in job["steps"]}


def test_workflows_pass_actionlint():
    exe = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which(
        "actionlint"
    )
    if exe is None:
        pytest.skip("actionlint is not installed (pip install -r requirements.txt)")
    result = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_ci_script_on_pushes_and_pull_requests():
    wf, on = _workflow("ci.yml")
    assert {"push", "pull_request"} <= set(on)
    (job,) = wf["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    steps = _steps(job)
    python = steps["actions/setup-python"]["with"]
    assert str(python["python-version"]) == "3.11" and python["cache"] == "pip"
    assert "bash .ci/run" in steps


def test_book_is_built_and_deployed_to_pages_from_main():
    wf, on = _workflow("book.yml")
    assert on["push"]["branches"] == ["main"]
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    steps = _steps(build)
    assert any(str(k).startswith("jupyter-book build .") for k in steps)
    assert steps["actions/upload-pages-artifact"]["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert "actions/deploy-pages" in _steps(deploy)


def test_readme_shows_the_ci_badge_and_links_the_published_book():
    owner, name = REPO.split("/")
    readme = (ROOT / "README.md").read_text()
    assert f"https://github.com/{REPO}/actions/workflows/ci.yml/badge.svg" in readme
    assert f"https://{owner}.github.io/{name}/" in readme
