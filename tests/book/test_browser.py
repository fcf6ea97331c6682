"""The built book, read in a real browser (headless Chromium) with no network.

Every page of _toc.yml is opened from the HTML that tests/conftest.py builds (the same
build as tests/book/test_book.py), after its scripts have run and MathJax has typeset it, and
is checked for: error output cells, figures that do not load, math left untypeset (or a
TeX error), markdown tables that did not become tables, broken internal links, citations
and cross-references that did not resolve, resources that failed to load and script
errors. Each page is then laid out at a 1,280-pixel window, where no code block and no
printed output may scroll sideways (the first line that does not fit is reported), and at a
390-pixel phone window, where the page may not scroll sideways, no paragraph or list item
may be wider than its box, and a table wider than the column must sit in a container that
scrolls (code may scroll there). Chromium's network goes to a dead proxy, so anything the pages fetch from the
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

# What the pages may still fetch from the internet, and why that is harmless offline
# (nothing now: the chapters' Open in Colab badge is the book's own book/images/colab-badge.svg).
REMOTE_ALLOWED: dict[str, str] = {}
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


WIDE, PHONE = 1280, 390  # the window widths (CSS pixels) of the layout checks
SLACK = 2  # pixels a box may overflow by (rounding)

# Runs in a laid-out page; LAYOUT_CHECK(mode, slack) returns a list of problems. "code": every
# <pre> (code input and printed output, folded cells opened) must fit its box; "prose": the
# page must not scroll sideways, text blocks must fit theirs, and wide tables must scroll.
LAYOUT_CHECK = r"""
((mode, slack) => {
  const main = document.querySelector('main') || document.body;
  const snippet = s => s.replace(/\s+/g, ' ').trim().slice(0, 120);
  const problems = [];
  if (mode === 'code') {
    main.querySelectorAll('details').forEach(d => { d.open = true; });
    let checked = 0;
    for (const pre of main.querySelectorAll('pre')) {
      if (!pre.clientWidth) continue;  // not displayed
      checked++;
      if (pre.scrollWidth <= pre.clientWidth + slack) continue;
      const style = getComputedStyle(pre);
      const room = pre.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
      const lines = pre.textContent.split('\n');
      const probe = document.createElement('span');
      probe.style.cssText = 'position:absolute;visibility:hidden;white-space:pre';
      pre.appendChild(probe);
      const first = lines.find(line => {
        probe.textContent = line;
        return probe.getBoundingClientRect().width > room + slack;
      });
      probe.remove();
      const kind = pre.closest('.cell_output, .output') ? 'output' : 'code';
      problems.push(`${kind} wider than the column (${pre.scrollWidth} > ${pre.clientWidth} px): ` +
                    snippet(first === undefined ? pre.textContent : first));
    }
    return {problems, checked};
  }
  const width = document.documentElement.clientWidth;
  const page = document.scrollingElement.scrollWidth;
  if (page > width + slack) problems.push(`the page scrolls sideways (${page} > ${width} px)`);
  let checked = 0;
  const article = document.querySelector('.bd-article') || main;  // not the sidebars
  for (const el of article.querySelectorAll('p, li, dt, dd, h1, h2, h3, h4, blockquote, table')) {
    if (el.closest('pre, .highlight, .cell_output, mjx-container') || !el.clientWidth) continue;
    if (el.tagName !== 'TABLE' && el.closest('table')) continue;  // the table is checked
    checked++;
    const box = el.getBoundingClientRect();
    if (el.tagName === 'TABLE') {
      let scroller = el.parentElement;
      while (scroller && scroller !== main && !['auto', 'scroll'].includes(getComputedStyle(scroller).overflowX))
        scroller = scroller.parentElement;
      const room = scroller && scroller !== main ? scroller.getBoundingClientRect().right : width;
      if (box.right > width + slack && room > width + slack || box.right > room + slack && !(scroller && scroller !== main))
        problems.push(`table cut off (${Math.round(box.right)} > ${width} px): ` + snippet(el.textContent));
    } else if (el.scrollWidth > el.clientWidth + slack || box.right > width + slack || box.left < -slack) {
      problems.push(`${el.tagName.toLowerCase()} cut off (${el.scrollWidth} > ${el.clientWidth} px): ` + snippet(el.textContent));
    }
  }
  return {problems, checked};
})
"""


def layout_problems(browser: "Chromium", session: str, width: int, mode: str) -> dict:
    """Lay the loaded page out at a window ``width`` pixels wide and run LAYOUT_CHECK."""
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": width < 600},
        session,
    )
    return browser.evaluate(session, f"({LAYOUT_CHECK})({json.dumps(mode)}, {SLACK})")


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
    blocks = {"code": 0, "prose": 0}  # code blocks and text blocks whose layout was checked
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
            for width, mode in ((WIDE, "code"), (PHONE, "prose")):
                laid_out = layout_problems(browser, session, width, mode)
                problems += [f"at {width} px, {p}" for p in laid_out["problems"]]
                blocks[mode] += laid_out["checked"]
            browser.send("Emulation.clearDeviceMetricsOverride", session=session)
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
    assert typeset and figures and blocks["code"] and blocks["prose"], (
        f"{typeset} formulas typeset, {figures} figures shown, {blocks['code']} code blocks "
        f"and {blocks['prose']} text blocks laid out in the book"
    )


# A page made to fail every layout check: a code line, an output line, a paragraph word and
# a table too wide for the window, each next to one that fits.
OVERFLOWING_PAGE = """<!DOCTYPE html><html><head><meta name="viewport" content="width=device-width">
<style>body { margin: 0; font: 16px sans-serif; } main { width: 600px; max-width: 100%; }
pre { overflow-x: auto; } .scroll { overflow-x: auto; }</style></head><body><main>
<div class="cell_input"><pre>short = 1\n@CODE@</pre></div>
<div class="cell_output"><pre>fits\n@OUTPUT@</pre></div>
<p>A paragraph that wraps. @WORD@</p>
<table><tr>@CELLS@</tr></table>
<div class="scroll"><table><tr>@CELLS@</tr></table></div>
</main></body></html>"""
OVERFLOWING_PAGE = OVERFLOWING_PAGE.replace("@CODE@", "long_line = " + " + ".join(["1"] * 60))
OVERFLOWING_PAGE = OVERFLOWING_PAGE.replace(
    "@OUTPUT@", "reconstruction PSNR: " + ", ".join(["21.12 dB"] * 20)
)
OVERFLOWING_PAGE = OVERFLOWING_PAGE.replace("@WORD@", "x" * 80)
OVERFLOWING_PAGE = OVERFLOWING_PAGE.replace(
    "@CELLS@",
    "<td>column</td>" * 20,
)


def test_the_layout_check_finds_what_does_not_fit(tmp_path):
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium on PATH")
    page = tmp_path / "overflowing.html"
    page.write_text(OVERFLOWING_PAGE)
    browser = Chromium(exe, tmp_path)
    try:
        session = browser.new_tab()
        browser.goto(session, page.as_uri())
        wide = layout_problems(browser, session, 500, "code")
        narrow = layout_problems(browser, session, 390, "prose")
    finally:
        browser.close()
    assert wide["checked"] == 2, wide
    assert [p.split(":")[0].split(" (")[0] for p in wide["problems"]] == [
        "code wider than the column",
        "output wider than the column",
    ], wide
    assert "long_line = 1 + 1 + 1" in wide["problems"][0]
    assert "reconstruction PSNR: 21.12 dB" in wide["problems"][1]
    kinds = [p.split(" (")[0] for p in narrow["problems"]]
    # The paragraph's long word and the bare table make the page scroll sideways; the table
    # inside a scrolling container is fine.
    assert kinds == ["the page scrolls sideways", "p cut off", "table cut off"], narrow
