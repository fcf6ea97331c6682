"""Serve MathJax from the built book itself, so that formulas render with no network.

Sphinx loads MathJax from a CDN by default; offline (a workshop room with bad Wi-Fi, a
book read from a USB stick) every formula then shows as raw LaTeX. This extension copies
MathJax 3 from the ``django-static-mathjax`` package (pinned in requirements.txt; the
files are not committed) into ``_static/mathjax/`` of the HTML output and points
``mathjax_path`` at that copy. Registered in ``_config.yml`` under
``sphinx: local_extensions``.
"""

import importlib.util
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ExtensionError
from sphinx.ext.mathjax import MATHJAX_URL

# The combined component that Sphinx's default URL names: TeX and MathML input, HTML output.
BUNDLE = "tex-mml-chtml.js"
# Where the copy goes, relative to the output's _static folder (so that is how
# mathjax_path names it: Sphinx puts a relative mathjax_path under _static/).
TARGET = "mathjax"


def mathjax_es5() -> Path:
    """The es5 folder (MathJax's browser build) inside the installed package."""
    # The distribution is named django-static-mathjax; its importable package is `mathjax`.
    # find_spec locates it without importing it.
    spec = importlib.util.find_spec("mathjax")
    es5 = Path(spec.origin).parent / "static" / "mathjax" / "es5" if spec and spec.origin else None
    if es5 is None or not (es5 / BUNDLE).is_file():
        raise ExtensionError("offline_mathjax: MathJax 3 not found; install the book's "
                             "requirements (pip install -r requirements.txt), which pin "
                             "django-static-mathjax")
    return es5


def use_local_mathjax(app: Sphinx, config: Config) -> None:
    # `offline_mathjax: false` (under sphinx: config: in _config.yml) keeps Sphinx's CDN; a
    # mathjax_path set to anything but Sphinx's default is left alone too.
    if config.offline_mathjax and config.mathjax_path == MATHJAX_URL:
        config.mathjax_path = f"{TARGET}/{BUNDLE}"


def _skip_other_bundles(folder: str, names: list[str]) -> list[str]:
    """copytree filter: at the top of es5, drop the combined bundles the book never loads.

    The other top-level ``tex-*.js``/``mml-*.js`` files are alternative all-in-one
    builds (about 15 MB together), ``node-main.js`` is for Node and ``latest.js`` would
    fetch the newest MathJax from a CDN. Everything in the
    subfolders stays: MathJax loads from them on demand (TeX extensions such as
    ``\\require``d packages, the CHTML fonts, the menu, the accessibility and speech
    components, the SVG output when a reader picks it in the menu).
    """
    if Path(folder).name != "es5":
        return []
    return [name for name in names
            if name in ("node-main.js", "latest.js")
            or (name.endswith(".js") and name.startswith(("tex-", "mml-")) and name != BUNDLE)]


def copy_mathjax(app: Sphinx) -> None:
    # Copy before the pages are written: Sphinx then adds its ?v=checksum to the script
    # URL, so a browser does not keep a stale MathJax after an upgrade.
    if app.builder.format != "html" or app.config.mathjax_path != f"{TARGET}/{BUNDLE}":
        return
    es5 = mathjax_es5()
    target = Path(app.outdir) / "_static" / TARGET
    shutil.copytree(es5, target, ignore=_skip_other_bundles, dirs_exist_ok=True)
    # MathJax is Apache-2.0: its licence travels with the copy.
    shutil.copy2(es5.parent / "LICENSE", target / "LICENSE")


def setup(app: Sphinx) -> dict:
    app.setup_extension("sphinx.ext.mathjax")   # defines mathjax_path before we change it
    app.add_config_value("offline_mathjax", True, "html", bool)
    # priority > 500: after config values from _config.yml are in place.
    app.connect("config-inited", use_local_mathjax, priority=800)
    app.connect("builder-inited", copy_mathjax)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
