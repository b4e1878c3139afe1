"""Tests for minivlm.slides: decks build to offline reveal.js HTML and work in headless Chromium."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from minivlm import slides

REPO = Path(__file__).resolve().parent.parent
DECKS = sorted(p for p in (REPO / "slides").glob("*.ipynb") if not p.name.startswith((".", "_")))
SHOT_DIR = REPO / "slides" / "build"
# lowest visible content of the current slide vs. the bottom of the (scaled) slide frame
_CONTENT_BOTTOM_JS = """() => {
  const frame = document.querySelector('.reveal .slides').getBoundingClientRect();
  let bottom = frame.top;
  for (const e of Reveal.getCurrentSlide().querySelectorAll('*')) {
    if (e.closest('aside.notes')) continue;
    const r = e.getBoundingClientRect();
    if (r.height > 0) bottom = Math.max(bottom, r.bottom);
  }
  return [Math.round(bottom), Math.round(frame.bottom)];
}"""
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _need_npm_assets() -> None:
    """Skip (with instructions) when the pinned assets are absent and npm cannot fetch them."""
    home = slides.slides_home()
    if (home / "node_modules" / "reveal.js").is_dir() and (home / "node_modules" / "katex").is_dir():
        return
    if shutil.which("npm") is None:
        pytest.skip("npm not found and slides/node_modules missing: install Node.js with npm "
                    "(apt-get install nodejs npm), then run `npm ci --prefix slides`")


def _chromium() -> str | None:
    for cand in (os.environ.get("CHROMIUM"), shutil.which("chromium"),
                 shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _deck(cells: list, path: Path) -> Path:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def _cell(c, slide_type: str = "-", tags: tuple[str, ...] = ()):
    c.metadata["slideshow"] = {"slide_type": slide_type}
    if tags:
        c.metadata["tags"] = list(tags)
    return c


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """Every deck under slides/ built once into a temporary folder."""
    _need_npm_assets()
    out = tmp_path_factory.mktemp("decks")
    before = {p: _sha(p) for p in DECKS}
    t0 = time.perf_counter()
    paths = slides.build_all(REPO / "slides", out)
    seconds = time.perf_counter() - t0
    return {"out": out, "paths": paths, "seconds": seconds, "before": before}


# --------------------------------------------------------------------------- pure functions


def test_count_slides_follows_nbconvert_rules():
    md = new_markdown_cell
    cells = [
        _cell(new_code_cell("setup"), "skip", ("remove_cell",)),
        _cell(md("notes first"), "notes"),
        _cell(md("# title"), "-"),                      # first shown cell opens slide 1
        _cell(md("more"), "fragment"),
        _cell(md("## two"), "slide"),                   # 2
        _cell(md("down"), "subslide"),                  # 3 (vertical)
        _cell(md("hidden"), "slide", ("remove_cell",)),  # dropped before counting
        _cell(md("skip me"), "skip"),
        _cell(md("## three"), "slide"),                 # 4
        _cell(md("notes"), "notes"),
    ]
    assert slides.count_slides(new_notebook(cells=cells)) == 4
    assert slides.count_slides(new_notebook(cells=[_cell(md("x"), "notes")])) == 0


def test_remote_resources_finds_loads_not_links():
    html = """<html><head>
    <script src="https://cdn.example.org/require.js"></script>
    <link rel="stylesheet" href="//fonts.example.org/a.css">
    <style>@import "https://fonts.googleapis.com/css?family=Lato"; .x{background:url(http://e.org/i.png)}
    .y{background:url(data:image/png;base64,AAAA)}</style>
    <script src="reveal.js/reveal.js"></script></head>
    <body><a href="https://arxiv.org/abs/2103.00020">paper</a><img src="data:image/png;base64,AAA">
    <img src="http://example.org/x.png"></body></html>"""
    found = slides.remote_resources(html)
    assert sorted(found) == sorted(["https://cdn.example.org/require.js", "//fonts.example.org/a.css",
                                    "https://fonts.googleapis.com/css?family=Lato",
                                    "http://e.org/i.png", "http://example.org/x.png"])
    assert slides.remote_resources('<script src="a.js"></script><a href="http://x">x</a>') == []


def test_missing_npm_gives_install_instructions(tmp_path, monkeypatch):
    home = tmp_path / "slides_home"
    home.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copy(REPO / "slides" / name, home / name)
    monkeypatch.setattr(slides.shutil, "which", lambda name: None)
    with pytest.raises(slides.SlidesError, match="npm not found") as e:
        slides.ensure_npm_assets(home)
    assert "apt-get install nodejs npm" in str(e.value) and "npm ci --prefix" in str(e.value)
    with pytest.raises(slides.SlidesError, match="package.json"):
        slides.ensure_npm_assets(tmp_path / "nowhere")


def test_package_json_pins_exact_versions():
    import json

    pkg = json.loads((REPO / "slides" / "package.json").read_text())
    lock = json.loads((REPO / "slides" / "package-lock.json").read_text())
    for name in ("reveal.js", "katex"):
        version = pkg["dependencies"][name]
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} must be pinned exactly: {version}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version


# --------------------------------------------------------------------------- building


def test_decks_build_offline(built):
    out: Path = built["out"]
    assert [p.name for p in built["paths"]] == [f"{d.stem}.html" for d in DECKS]
    for deck, html_path in zip(DECKS, built["paths"]):
        html = html_path.read_text(encoding="utf-8")
        srcs = re.findall(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?([^\"'\s>]+)",
                          html, re.IGNORECASE)
        assert srcs, "expected script/link tags"
        remote = [s for s in srcs if re.match(r"(https?:)?//", s)]
        assert remote == [], f"{deck.name}: remote resources {remote}"
        assert slides.remote_resources(html) == []
        for bad in ("require.js", "jquery", "mathjax", "unpkg.com", "cdnjs", "googleapis"):
            assert bad not in html.lower(), f"{deck.name}: {bad} left in the HTML"
        assert 'src="reveal.js/reveal.js"' in html and 'src="katex/katex.min.js"' in html
        assert html.count("data:image/png;base64,") >= 1
        assert _sha(deck) == built["before"][deck], f"{deck.name} was modified by the build"
    for rel in ("reveal.js/reveal.js", "reveal.js/reveal.css", "reveal.js/theme/white.css",
                "reveal.js/plugin/notes.js", "katex/katex.min.js", "katex/katex.min.css",
                "katex/contrib/auto-render.min.js", "katex/fonts/KaTeX_Main-Regular.woff2"):
        assert (out / rel).is_file(), rel
    assert 'href="00_tour.html"' in (out / "index.html").read_text()


def test_tour_deck_content(built):
    html = (built["out"] / "00_tour.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 6  # patches, heads, masks, bars, shapes...
    assert 'aside class="notes"' in html  # speaker notes
    assert "viz.patch_grid(" not in html  # remove_input hides the figure code...
    assert "patchify" in html and "(1, 196, 768)" in html  # ...the one shown cell stays
    assert "\\sqrt{d}" in html  # math is left for KaTeX to typeset in the browser
    for note in ("N002", "N004", "arXiv:2103.00020"):
        assert note in html


def test_build_deck_small_deck_and_errors(tmp_path):
    _need_npm_assets()
    src = _deck([
        _cell(new_markdown_cell("# Tiny deck\n\n$a^2 + b^2 = c^2$"), "slide"),
        _cell(new_code_cell("print('hidden ' + 'code')"), "-", ("remove_input",)),
        _cell(new_markdown_cell("## Second"), "slide"),
        _cell(new_markdown_cell("what to say"), "notes"),
    ], tmp_path / "tiny.ipynb")
    out = tmp_path / "out"
    html_path = slides.build_deck(src, out, timeout=60)
    html = html_path.read_text()
    assert html_path == out / "tiny.html"
    assert "hidden code" in html and "print('hidden" not in html
    # nbconvert nests a <section> (vertical stack) around each slide's <section>
    assert slides.count_slides(src) == 2 and html.count("<section") == 4
    assert oct(html_path.stat().st_mode & 0o044) == oct(0o044)  # readable when served

    # a file that the builder did not write is never replaced silently
    foreign = out / "foreign.html"
    foreign.write_text("<html>mine</html>")
    shutil.copy(src, tmp_path / "foreign.ipynb")
    with pytest.raises(slides.SlidesError, match="not built by minivlm"):
        slides.build_deck(tmp_path / "foreign.ipynb", out, execute=False)
    assert foreign.read_text() == "<html>mine</html>"

    bad = _deck([_cell(new_code_cell("raise RuntimeError('boom in deck')"), "slide")],
                tmp_path / "bad.ipynb")
    with pytest.raises(slides.SlidesError, match="boom in deck"):
        slides.build_deck(bad, out, timeout=60)
    with pytest.raises(ValueError, match="ipynb"):
        slides.build_deck(tmp_path / "x.txt", out)


def test_decks_share_a_kernel_but_not_their_names(tmp_path):
    """build_all runs the decks in one kernel; a deck that uses a name only an earlier deck
    defined still fails, as it would on its own."""
    _need_npm_assets()
    src = tmp_path / "decks"
    src.mkdir()
    _deck([_cell(new_code_cell("import os\nleaked = os.getpid()\nprint(leaked)"), "slide")],
          src / "a.ipynb")
    _deck([_cell(new_code_cell("print(leaked)"), "slide")], src / "b.ipynb")
    with pytest.raises(slides.SlidesError, match="1 of 2 deck") as e:
        slides.build_all(src, tmp_path / "out", timeout=60)
    assert "b.ipynb" in str(e.value) and "NameError" in str(e.value)
    assert (tmp_path / "out" / "a.html").is_file()


def test_cli_builds_one_deck_without_executing(tmp_path, capsys):
    _need_npm_assets()
    src = _deck([_cell(new_markdown_cell("# CLI deck"), "slide")], tmp_path / "cli.ipynb")
    parser = argparse.ArgumentParser()
    slides.add_cli(parser.add_subparsers())
    args = parser.parse_args(["slides", str(src), "--out", str(tmp_path / "o"), "--no-execute"])
    assert args.func(args) == 0
    assert (tmp_path / "o" / "cli.html").is_file()
    assert str(tmp_path / "o" / "cli.html") in capsys.readouterr().out
    args = parser.parse_args(["slides", str(tmp_path / "missing.ipynb")])
    assert args.func(args) == 2


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def chromium_browser():
    """One headless Chromium for every deck (each deck gets a fresh context: its own page,
    storage and cache); launching it once saves a browser and driver start per deck."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("headless Chromium not found: `apt-get install chromium` (or `make browser`), "
                    "or set CHROMIUM=/path/to/chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.browser
@pytest.mark.parametrize("deck", DECKS, ids=[d.stem for d in DECKS])
def test_deck_in_headless_chromium(built, chromium_browser, deck):
    html_path = built["out"] / f"{deck.stem}.html"
    errors: list[str] = []
    requests: list[str] = []
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 720})
    try:
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(html_path.as_uri())
        page.wait_for_function("window.Reveal && Reveal.isReady()", timeout=20_000)
        total = page.evaluate("Reveal.getTotalSlides()")
        assert total == slides.count_slides(deck)
        assert page.evaluate("Reveal.hasPlugin('notes')")
        assert page.evaluate("document.querySelectorAll('.katex-error').length") == 0
        if "$" in deck.read_text(encoding="utf-8"):
            assert page.evaluate("document.querySelectorAll('.katex').length") > 0
        # every figure decoded
        assert page.evaluate(
            "[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        SHOT_DIR.mkdir(parents=True, exist_ok=True)
        shot = SHOT_DIR / f"{deck.stem}.title.png"
        page.screenshot(path=str(shot))
        overflow = []
        for i in range(total):  # visit every slide: no errors, nothing below the frame
            page.evaluate(f"Reveal.slide({i})")
            bottom, frame = page.evaluate(_CONTENT_BOTTOM_JS)
            if bottom > frame + 1:
                overflow.append(f"slide {i + 1}: content ends at {bottom} px, frame at {frame}")
        assert overflow == [], overflow
        # ?print-pdf (PDF export) lays the deck out for printing, also offline
        page.goto(html_path.as_uri() + "?print-pdf")
        page.wait_for_function("document.querySelectorAll('.pdf-page').length > 0",
                               timeout=20_000)
        assert page.evaluate("document.querySelectorAll('.pdf-page').length") >= total
    finally:
        context.close()
    assert errors == [], f"console errors: {errors}"
    remote = [u for u in requests
              if not u.startswith(("file://", "data:", "http://localhost", "http://127.0.0.1"))]
    assert remote == [], f"network requests: {remote}"
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape == (720, 1280)
    assert (img < 200).mean() > 0.01, "title slide screenshot looks blank"
