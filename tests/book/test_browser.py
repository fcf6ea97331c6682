"""The built book, read in a real browser (headless Chromium) with no network.

Every page of _toc.yml is opened from the HTML that tests/conftest.py builds (the same
build as tests/book/test_book.py), after its scripts have run and MathJax has typeset it, and
is checked for: error output cells, figures that do not load, math left untypeset (or a
TeX error), markdown tables that did not become tables, broken internal links, citations
and cross-references that did not resolve, resources that failed to load and script
errors. Chromium's network goes to a dead proxy, so anything the pages fetch from the
internet fails the test: the book must render offline.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``)
with the standard library only: no client package, nothing downloaded at run time. A
screenshot of each failing page goes to the test's temporary folder.
"""

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# $CHROMIUM names the browser; else the first of these on PATH (Debian's package is
# "chromium", Ubuntu's and Google's builds go by the other names).
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PAGE_TIMEOUT = 60  # seconds for one page to load and be checked (a few seconds are typical)

# What the pages may still fetch from the internet, and why that is harmless offline.
REMOTE_ALLOWED = {
    "https://colab.research.google.com/assets/colab-badge.svg": "the chapters' Open in Colab badge: the link it sits in needs the internet anyway, "
    "and offline the badge shows its alt text, 'Open In Colab'",
}
# Script errors the pages have that do not affect the reader.
SCRIPT_ERRORS_ALLOWED = {
    "Identifier 'THEBE_JS_URL' has already been declared": "sphinx-thebe's configuration script is written twice into every page (online too); "
    "the second copy only repeats the constants of the first, and live code is not enabled",
}


def find_chromium() -> str | None:
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next(filter(None, map(shutil.which, BROWSERS)), None)


def toc_pages() -> list[str]:
    """Every page of _toc.yml (root first), as document names without a suffix."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                pages.append(node["file"])
            for key, value in node.items():
                if key != "root":
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(toc)
    return [page.removesuffix(".md").removesuffix(".ipynb") for page in pages]


class Chromium:
    """Headless Chromium and its DevTools protocol over a pipe.

    With ``--remote-debugging-pipe`` Chromium reads commands on its file descriptor 3 and
    writes replies and events on 4, each a JSON message ending with a NUL byte.
    """

    def __init__(self, exe: str, folder: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def pipes_on_3_and_4():  # runs in the child between fork and exec
            # Move both ends above any low descriptor first, so that the first dup2 cannot
            # overwrite the other end when os.pipe happened to return 3 or 4.
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 100)
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 100)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        profile = folder / "chromium-profile"
        profile.mkdir(exist_ok=True)
        self.log = folder / "chromium.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    exe,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--remote-debugging-pipe",
                    f"--user-data-dir={profile}",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--disable-background-networking",
                    "--hide-scrollbars",
                    "--window-size=1280,1000",
                    # Offline: every http(s) request goes to a proxy that is not there (file://
                    # pages do not use the proxy), so a page that needs the internet fails.
                    "--proxy-server=http://127.0.0.1:9",
                    "--proxy-bypass-list=<-loopback>",
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=pipes_on_3_and_4,
                pass_fds=(3, 4),
            )  # pass_fds: keep 3 and 4 open
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []  # events seen since the last clear, in order

    def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = PAGE_TIMEOUT,
    ) -> dict:
        """Send one command and return its result; events read meanwhile go to self.events."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_browser, data) :]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = PAGE_TIMEOUT) -> dict:
        """Wait for an event of this session (or take it from those already read)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event["params"]
            seen = len(self.events)
            self.events.append(self._receive(deadline, method))

    def _receive(self, deadline: float, waiting_for: str) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_browser], [], [], remaining)[0]:
                raise TimeoutError(f"Chromium did not answer {waiting_for} in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited; its log: {self.log.read_text()[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def new_tab(self) -> str:
        """Open a tab and return the id of a session attached to it."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        # flatten: the tab's commands and events go over this same pipe, tagged with sessionId.
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Network"):
            self.send(f"{domain}.enable", session=session)
        return session

    def goto(self, session: str, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session)
        self.wait_for("Page.loadEventFired", session)

    def evaluate(self, session: str, expression: str):
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"the page check raised: {result['exceptionDetails']}")
        return result["result"]["value"]

    def screenshot(self, session: str, path: Path) -> None:
        """The whole page (up to 20,000 CSS pixels tall) as a PNG."""
        size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        clip = {
            "x": 0,
            "y": 0,
            "width": size["width"],
            "height": min(size["height"], 20000),
            "scale": 1,
        }
        shot = self.send(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": True},
            session,
        )
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


# Runs in the page once it has loaded; returns what the page shows as a JSON-able object.
PAGE_CHECK = r"""
(async () => {
  const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
  // MathJax 3 typesets after the load event; startup.promise resolves when it is done.
  // Without the MathJax component (offline with a CDN copy) window.MathJax is just the
  // configuration object Sphinx wrote, and the math checks below fail.
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await Promise.race([MathJax.startup.promise, sleep(20000)]);
  }
  // Figures: make lazy ones load too, then wait for every image to settle.
  const images = [...document.images];
  images.forEach(img => { img.loading = 'eager'; });
  await Promise.race([
    Promise.all(images.map(img => img.complete ? null : new Promise(done => {
      img.addEventListener('load', done); img.addEventListener('error', done); }))),
    sleep(10000)]);

  const main = document.querySelector('main') || document.body;
  const snippet = s => s.replace(/\s+/g, ' ').trim().slice(0, 120);
  // Text a reader sees as prose: not code, not a script, not MathJax's own output.
  const prose = node => !node.parentElement.closest(
    'pre, code, script, style, textarea, kbd, .highlight, mjx-container');
  const texts = [];
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
  for (let node; (node = walker.nextNode());) if (prose(node)) texts.push(node.textContent);

  const problems = [];
  const problem = (kind, detail) => problems.push(kind + ': ' + snippet(detail));

  // An error output cell, unless its cell is tagged raises-exception on purpose.
  for (const out of main.querySelectorAll('.output.traceback, .output.error')) {
    if (!out.closest('.tag_raises-exception')) problem('error output', out.textContent);
  }
  for (const img of images) {
    if (!img.complete || img.naturalWidth === 0) problem('figure not loaded', img.getAttribute('src') || '');
  }
  // Sphinx wraps math in .math elements; typeset, each holds an mjx-container.
  for (const math of main.querySelectorAll('.math')) {
    if (!math.querySelector('mjx-container')) problem('math not typeset', math.textContent);
  }
  for (const err of main.querySelectorAll('mjx-merror')) {
    problem('TeX error', err.getAttribute('data-mjx-error') || err.textContent);
  }
  const rawMath = [/\\\(/, /\\\[/, /\$\$/, /\\begin\{/, /\$[^$\n]*\\[A-Za-z]+[^$\n]*\$/];
  for (const text of texts) {
    if (rawMath.some(re => re.test(text))) problem('raw math in the text', text);
    // A MyST role that was never processed shows as {name}`target`.
    if (/\{(cite|doc|ref|numref|eq|term|download)(:[a-z]+)?\}`/.test(text)) problem('raw role', text);
  }
  // A markdown table that did not become a table: its rows are left as text in a
  // paragraph, starting and ending with |, or its |---| separator is.
  for (const block of main.querySelectorAll('p, li, dd')) {
    if (block.closest('pre, code, .highlight')) continue;
    const text = block.textContent.trim();
    if ((text.startsWith('|') && text.endsWith('|') && text.length > 1) || /\|\s*:?-{3,}:?\s*\|/.test(text)) {
      problem('table row as text', text);
    }
  }
  // sphinxcontrib-bibtex leaves an unresolved {cite} as a citation with no link in it
  // ("[]"); an unresolved {doc}/{ref} is an .xref outside any link. Python-domain
  // references are left out: the build (-n -W) already fails on an unresolved diffbook
  // one, and those to other packages (jax.Array, pathlib.Path) are plain text on purpose,
  // since the offline build has no intersphinx inventories to link them to.
  for (const cite of main.querySelectorAll('.bibtex-citation')) {
    if (!cite.querySelector('a[href]')) problem('citation not resolved', cite.outerHTML);
  }
  for (const xref of main.querySelectorAll('.xref:not(.py)')) {
    if (!xref.closest('a[href]')) problem('cross-reference not resolved', xref.textContent);
  }
  return {
    problems,
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    typeset: main.querySelectorAll('mjx-container').length,
    figures: images.filter(img => img.naturalWidth > 0).length,
  };
})()
"""


class _Anchors(HTMLParser):
    """Collects the id and name attributes of an HTML file (the targets of #fragments)."""

    def __init__(self):
        super().__init__()
        self.anchors = set()

    def handle_starttag(self, tag, attrs):
        self.anchors.update(value for key, value in attrs if key in ("id", "name") and value)


def broken_links(links: list[str], html: Path, cache: dict) -> list[str]:
    """The file:// links that point at nothing inside the built book."""
    broken = []
    for url in sorted(set(links)):
        parts = urlsplit(url)
        if parts.scheme != "file":
            continue  # web links lead outside the book; they are not checked offline
        path = Path(unquote(parts.path))
        if path.is_dir():
            path = path / "index.html"
        if not path.is_relative_to(html):
            broken.append(f"link outside the built book: {url}")
        elif not path.is_file():
            broken.append(f"link to a missing file: {path.relative_to(html)}")
        elif parts.fragment and path.suffix == ".html":
            if path not in cache:
                parser = _Anchors()
                parser.feed(path.read_text(errors="replace"))
                cache[path] = parser.anchors
            if unquote(parts.fragment) not in cache[path]:
                broken.append(
                    f"link to a missing anchor: {path.relative_to(html)}#{parts.fragment}"
                )
    return broken


def test_every_page_renders_offline_in_chromium(request, tmp_path):
    exe = find_chromium()
    if exe is None:
        message = (
            "no Chromium on PATH (" + ", ".join(BROWSERS) + ", or set $CHROMIUM): "
            "install it, e.g. apt-get install chromium"
        )
        if os.environ.get("CI", "").lower() in ("true", "1"):  # .ci/run and GitHub set CI=true
            pytest.fail(message + " — CI must run the browser test")
        pytest.skip(message)
    # Asked for only now, so that a skip does not wait for a build first; the build is
    # tests/conftest.py's, shared with tests/book/test_book.py.
    built_book = request.getfixturevalue("built_book")
    html = built_book.html
    assert (html / "index.html").is_file(), f"the book did not build:\n{built_book.log}"

    failures, screenshots, anchors = {}, [], {}
    typeset = figures = 0  # over the whole book: the checks must have had work to do
    browser = Chromium(exe, tmp_path)
    try:
        session = browser.new_tab()
        for page in toc_pages():
            file = html / f"{page}.html"
            if not file.is_file():
                failures[page] = [f"not built: {file.relative_to(html)} is missing"]
                continue
            browser.goto(session, file.as_uri())
            seen = browser.evaluate(session, PAGE_CHECK)
            problems = seen["problems"] + broken_links(seen["links"], html, anchors)
            typeset += seen["typeset"]
            figures += seen["figures"]
            # Resources (scripts, styles, fonts, images) that failed to load, the internet
            # included, and script errors, from the events of this page's load.
            requested = {}
            for event in browser.events:
                params = event.get("params", {})
                if event.get("method") == "Network.requestWillBeSent":
                    requested[params["requestId"]] = params["request"]["url"]
                elif event.get("method") == "Network.loadingFailed" and not params.get("canceled"):
                    url = requested.get(params["requestId"], "?")
                    problems.append(f"failed to load ({params['errorText']}): {url}")
                elif event.get("method") == "Runtime.exceptionThrown":
                    details = params["exceptionDetails"]
                    text = details.get("exception", {}).get("description") or details.get("text")
                    problems.append(f"script error: {text.splitlines()[0]}")
            problems = [
                p
                for p in problems
                if not any(p.endswith(url) for url in REMOTE_ALLOWED)
                and not any(error in p for error in SCRIPT_ERRORS_ALLOWED)
            ]
            if problems:
                failures[page] = problems
                shot = tmp_path / f"{page.replace('/', '__')}.png"
                browser.screenshot(session, shot)
                screenshots.append(str(shot))
    finally:
        browser.close()

    def listed(problems, most=12):  # a page without MathJax has a line per formula: cap it
        more = [f"... and {len(problems) - most} more"] if len(problems) > most else []
        return "\n".join(f"  - {p}" for p in problems[:most] + more)

    report = "\n".join(f"{page}:\n{listed(problems)}" for page, problems in failures.items())
    assert not failures, (
        f"{len(failures)} page(s) do not render cleanly in Chromium:\n{report}\n"
        "screenshots:\n  " + "\n  ".join(screenshots)
    )
    # The book has formulas and figures; none typeset or shown means the checks saw nothing.
    assert typeset and figures, (
        f"{typeset} formulas typeset and {figures} figures shown in the book"
    )
