"""Every chapter runs on its accelerator recipe: ``python tools/notebooks.py smoke``.

CI has no GPU or TPU, and the chapters' stored outputs come from the CPU recipe, so
without this test the configuration that every Colab reader on a GPU or TPU runs
would never execute.  Each chapter runs top to bottom with its accelerator recipe on
8 virtual CPU devices (so training, sampling and evaluation are sharded as on a TPU
v2-8), with the step and sample counts of its recipe's ``"smoke"`` entry: every cell
runs on the accelerator recipe's data, resolution and networks.  Its outputs are not
compared with anything (the figures of a few training steps mean nothing); a cell
that raises fails the test, with the cell's traceback in the message.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9]*.md"))


def _run_smoke(chapter: str, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "tools/notebooks.py",
            "smoke",
            "--out",
            str(tmp_path),
            f"notebooks/{chapter}",
        ],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    executed = tmp_path / chapter.replace(".md", ".ipynb")
    assert executed.exists()
    # The chapter said which configuration it ran: the accelerator one, as a smoke run,
    # on the 8 devices that its training and sampling were sharded over.
    text = executed.read_text()
    assert "configuration 'accelerator' on 8 cpu devices" in text
    assert "SMOKE RUN" in text


def _smoke_class(chapter: str) -> type:
    def test_runs_on_its_accelerator_recipe(self, tmp_path):
        _run_smoke(chapter, tmp_path)

    return type(
        f"TestChapter{chapter[:2]}",
        (),
        {
            "chapter": chapter,
            "test_runs_on_its_accelerator_recipe": test_runs_on_its_accelerator_recipe,
        },
    )


# One class per chapter, not one parametrized function: pytest-xdist's ``--dist
# loadscope`` hands out a module's functions as one unit but each class as its own, so
# the two workers share the smoke runs instead of one worker running all of them.
for _chapter in CHAPTERS:
    _cls = _smoke_class(_chapter)
    globals()[_cls.__name__] = _cls
