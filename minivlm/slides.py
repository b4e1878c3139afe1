"""Lecture decks: notebooks with slide metadata -> offline reveal.js HTML.

A deck is a notebook under ``slides/`` whose cells carry Jupyter's slideshow metadata
(``cell.metadata.slideshow.slide_type`` = ``slide`` / ``subslide`` / ``fragment`` /
``notes`` / ``skip`` / ``-``) and tags that hide code in the output (``remove_input``,
``remove_output``, ``remove_cell``; nbconvert's TagRemovePreprocessor). Building:

1. execute the notebook with nbclient (kernel working directory = the deck's folder);
2. export with nbconvert's ``SlidesExporter`` through the template
   ``slides/templates/minivlm_reveal`` (no jQuery/require.js/MathJax CDN links; figures stay
   base64 PNGs);
3. copy reveal.js and KaTeX from ``slides/node_modules`` (npm packages pinned in
   ``slides/package.json`` / ``package-lock.json``; ``npm ci`` runs when they are missing)
   next to the HTML, and check that the HTML loads nothing from the network.

    minivlm slides slides/ --out slides/build          # every deck + index.html
    minivlm slides slides/00_tour.ipynb --out /tmp/d   # one deck

Set ``MINIVLM_SLIDES_HOME`` to use another folder holding ``package.json`` and
``templates/`` (default: the repository's ``slides/``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from minivlm.utils import atomic_write

__all__ = [
    "SlidesError",
    "add_cli",
    "build_all",
    "build_deck",
    "count_slides",
    "ensure_npm_assets",
    "remote_resources",
    "slides_home",
]

TEMPLATE_NAME = "minivlm_reveal"
REVEAL_DIR = "reveal.js"  # reveal_url_prefix, relative to the HTML
KATEX_DIR = "katex"
GENERATOR_MARK = 'content="minivlm.slides'
REMOVE_INPUT_TAGS = ("remove_input", "hide_input")
REMOVE_OUTPUT_TAGS = ("remove_output", "hide_output")
REMOVE_CELL_TAGS = ("remove_cell",)
# Files copied from the npm packages: (package, path inside the package, path in the build).
_REVEAL_FILES = ("dist/reset.css", "dist/reveal.css", "dist/reveal.js", "dist/plugin/notes.js")
_KATEX_FILES = ("dist/katex.min.css", "dist/katex.min.js", "dist/contrib/auto-render.min.js")
_INSTALL_NODE = (
    "install Node.js (18 or newer) with npm -- e.g. `apt-get install nodejs npm`, "
    "`conda install -c conda-forge nodejs`, `brew install node` or the installer from nodejs.org"
    " -- then run `npm ci --prefix slides` once (online); later builds work offline"
)


class SlidesError(RuntimeError):
    """A deck could not be built (missing npm assets, a failing cell, a remote resource...)."""


# --------------------------------------------------------------------------- assets


def slides_home() -> Path:
    """Folder with ``package.json``, ``node_modules/`` and ``templates/`` for the decks."""
    env = os.environ.get("MINIVLM_SLIDES_HOME")
    return Path(env).resolve() if env else Path(__file__).resolve().parent.parent / "slides"


def _pinned_versions(home: Path) -> dict[str, str]:
    pkg = home / "package.json"
    if not pkg.is_file():
        raise SlidesError(
            f"{pkg} not found: minivlm.slides needs the repository's slides/ folder "
            "(package.json, package-lock.json, templates/); set MINIVLM_SLIDES_HOME to it"
        )
    try:
        deps = json.loads(pkg.read_text(encoding="utf-8")).get("dependencies", {})
    except json.JSONDecodeError as e:
        raise SlidesError(f"{pkg}: not valid JSON ({e})") from e
    for name in ("reveal.js", "katex"):
        if name not in deps:
            raise SlidesError(f"{pkg}: expected a pinned dependency on {name!r}")
    return {k: str(v) for k, v in deps.items()}


def _installed_version(home: Path, name: str) -> str | None:
    pkg = home / "node_modules" / name / "package.json"
    try:
        return str(json.loads(pkg.read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError):
        return None


def ensure_npm_assets(home: str | os.PathLike | None = None, *, install: bool = True) -> dict:
    """Make sure ``node_modules`` holds the pinned reveal.js and KaTeX; run ``npm ci`` if not.

    Returns ``{"reveal.js": version, "katex": version}``. Raises :class:`SlidesError` with
    install instructions when npm is needed but missing (or ``install=False``).
    """
    home = Path(home) if home is not None else slides_home()
    pins = _pinned_versions(home)
    wanted = {k: pins[k] for k in ("reveal.js", "katex")}
    have = {k: _installed_version(home, k) for k in wanted}
    if have == wanted:
        return wanted
    if not install:
        raise SlidesError(f"{home / 'node_modules'} lacks {wanted} (found {have}); run "
                          f"`npm ci --prefix {home}`")
    npm = shutil.which("npm")
    if npm is None:
        raise SlidesError(f"npm not found, and {home / 'node_modules'} lacks reveal.js/KaTeX: "
                          + _INSTALL_NODE)
    if not (home / "package-lock.json").is_file():
        raise SlidesError(f"{home / 'package-lock.json'} is missing; it pins the exact assets")
    print(f"minivlm slides: installing pinned assets: npm ci --prefix {home}", file=sys.stderr)
    proc = subprocess.run([npm, "ci", "--prefix", str(home), "--no-audit", "--no-fund"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlidesError(f"`npm ci --prefix {home}` failed (exit {proc.returncode}):\n"
                          + (proc.stderr or proc.stdout)[-2000:])
    have = {k: _installed_version(home, k) for k in wanted}
    if have != wanted:
        raise SlidesError(f"after npm ci, found {have} in node_modules, expected {wanted}")
    return wanted


def offline_themes(home: str | os.PathLike | None = None) -> list[str]:
    """reveal.js themes that load no web fonts (usable offline)."""
    theme_dir = Path(home or slides_home()) / "node_modules" / "reveal.js" / "dist" / "theme"
    return sorted(p.stem for p in theme_dir.glob("*.css")
                  if not re.search(r"@import[^;]*https?:", p.read_text(encoding="utf-8")))


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.is_file():
        s, d = src.stat(), dst.stat()
        if s.st_size == d.st_size and int(s.st_mtime) == int(d.st_mtime):
            return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def _copy_assets(home: Path, out_dir: Path, theme: str) -> None:
    """reveal.js (core, notes plugin, one theme) and KaTeX (+ fonts) into ``out_dir``."""
    nm = home / "node_modules"
    theme_css = nm / "reveal.js" / "dist" / "theme" / f"{theme}.css"
    if not theme_css.is_file():
        raise SlidesError(f"theme {theme!r} not found; offline themes: {offline_themes(home)}")
    if re.search(r"@import[^;]*https?:", theme_css.read_text(encoding="utf-8")):
        raise SlidesError(
            f"theme {theme!r} loads web fonts; offline themes: {offline_themes(home)}")
    for rel in _REVEAL_FILES:
        _copy_if_changed(nm / "reveal.js" / rel, out_dir / REVEAL_DIR / rel.removeprefix("dist/"))
    _copy_if_changed(theme_css, out_dir / REVEAL_DIR / "theme" / f"{theme}.css")
    for rel in _KATEX_FILES:
        _copy_if_changed(nm / "katex" / rel, out_dir / KATEX_DIR / rel.removeprefix("dist/"))
    for font in sorted((nm / "katex" / "dist" / "fonts").iterdir()):
        _copy_if_changed(font, out_dir / KATEX_DIR / "fonts" / font.name)


# --------------------------------------------------------------------------- checks


class _ResourceFinder(HTMLParser):
    """Collect URLs a browser would fetch on load (not plain hyperlinks)."""

    _SRC_TAGS = {"script", "img", "iframe", "source", "video", "audio", "embed", "track", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag in self._SRC_TAGS and a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and a.get("href"):
            self.urls.append(a["href"])
        if tag == "object" and a.get("data"):
            self.urls.append(a["data"])
        if tag == "video" and a.get("poster"):
            self.urls.append(a["poster"])
        if "style" in a:
            self.urls += _css_urls(a["style"])
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.urls += _css_urls(data)


def _css_urls(css: str) -> list[str]:
    urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", css)
    urls += re.findall(r"@import\s+['\"]([^'\"]+)", css)
    return urls


def remote_resources(html: str) -> list[str]:
    """URLs in ``html`` that a browser would load from the network on opening the page
    (script/img/link sources, CSS ``url()``/``@import``), i.e. not data:/relative/file URLs."""
    finder = _ResourceFinder()
    finder.feed(html)
    remote = re.compile(r"^\s*(https?:|//|ftp:|wss?:)", re.IGNORECASE)
    return [u for u in finder.urls if remote.match(u)]


# --------------------------------------------------------------------------- decks


def _tags(cell: Any) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []) or [])


def _slide_type(cell: Any) -> str:
    return (cell.get("metadata", {}).get("slideshow", {}) or {}).get("slide_type", "-") or "-"


def count_slides(nb: Any) -> int:
    """Number of reveal.js slides (horizontal + vertical) a deck notebook makes.

    Mirrors nbconvert: the first shown cell opens a slide; every later ``slide`` or
    ``subslide`` cell opens another. Cells tagged ``remove_cell`` are dropped first.
    Accepts a path or a notebook node; equals ``Reveal.getTotalSlides()`` in the browser.
    """
    if isinstance(nb, str | os.PathLike):
        import nbformat

        nb = nbformat.read(str(nb), as_version=4)
    cells = [c for c in nb["cells"] if not _tags(c) & set(REMOVE_CELL_TAGS)]
    shown = [i for i, c in enumerate(cells) if _slide_type(c) not in ("notes", "skip")]
    if not shown:
        return 0
    return 1 + sum(_slide_type(c) in ("slide", "subslide") for c in cells[shown[0] + 1:])


@functools.lru_cache(maxsize=4)
def _exporter(home: Path, theme: str) -> Any:
    """One exporter per (assets folder, theme), reused for every deck of the process: a new
    one compiles its Jinja templates again (about a quarter of a second of CPU per deck)."""
    import nbconvert
    from traitlets.config import Config

    c = Config()
    c.SlidesExporter.template_name = TEMPLATE_NAME
    c.SlidesExporter.extra_template_basedirs = [str(home / "templates")]
    c.SlidesExporter.reveal_url_prefix = REVEAL_DIR
    c.SlidesExporter.reveal_theme = theme
    c.SlidesExporter.reveal_number = "c/t"
    c.SlidesExporter.exclude_input_prompt = True
    c.SlidesExporter.exclude_output_prompt = True
    c.SlidesExporter.embed_images = True  # markdown images become data: URIs too
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_cell_tags = set(REMOVE_CELL_TAGS)
    c.TagRemovePreprocessor.remove_input_tags = set(REMOVE_INPUT_TAGS)
    c.TagRemovePreprocessor.remove_all_outputs_tags = set(REMOVE_OUTPUT_TAGS)
    exporter = nbconvert.SlidesExporter(config=c)
    if not (home / "templates" / TEMPLATE_NAME / "index.html.j2").is_file():
        raise SlidesError(f"template {home / 'templates' / TEMPLATE_NAME} is missing")
    return exporter


#: run first in a shared kernel (see :class:`_SharedKernel`): the previous deck's names,
#: figures, matplotlib settings and torch seed are gone, as in a fresh kernel
_RESET_SOURCE = """%reset -f
import sys as _s, matplotlib as _m, matplotlib.pyplot as _p, torch as _t
_p.close("all")
if not hasattr(_s, "_minivlm_fresh"):
    _s._minivlm_fresh = (_m.rcParams.copy(), _t.initial_seed())
_m.rcParams.update({k: v for k, v in _s._minivlm_fresh[0].items()
                    if k not in ("backend", "interactive")})  # the inline backend's own
_t.manual_seed(_s._minivlm_fresh[1])
del _s, _m, _p, _t
%reset -f"""


class _SharedKernel:
    """One kernel that executes every deck of :func:`build_all` in turn (a kernel start and
    the torch/matplotlib imports cost seconds per deck). Before each deck a hidden first
    cell clears what the previous one left: its names (``%reset -f``), figures, matplotlib
    rcParams and the torch seed, so a deck that forgets an import still fails."""

    def __init__(self, kernel_name: str, cwd: Path) -> None:
        from jupyter_client.manager import KernelManager

        self.kernel_name, self.cwd = kernel_name, Path(cwd).resolve()
        self.km = KernelManager(kernel_name=kernel_name)
        self.km.start_kernel(cwd=str(self.cwd))

    def usable_for(self, name: str, src: Path) -> bool:
        """Same kernel, same working folder (the deck's), still running."""
        return name == self.kernel_name and src.parent.resolve() == self.cwd \
            and self.km.is_alive()

    def close(self) -> None:
        self.km.shutdown_kernel(now=True)


def _execute(nb: Any, src: Path, timeout: int, kernel_name: str | None,
             shared: _SharedKernel | None = None) -> None:
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    from nbconvert.preprocessors import ExecutePreprocessor
    from nbformat.v4 import new_code_cell

    name = kernel_name or nb.metadata.get("kernelspec", {}).get("name") or "python3"
    ep = ExecutePreprocessor(timeout=timeout, kernel_name=name)
    km = None
    if shared is not None and shared.usable_for(name, src):
        km = shared.km
        nb.cells.insert(0, new_code_cell(_RESET_SOURCE))
    try:
        ep.preprocess(nb, {"metadata": {"path": str(src.parent)}}, km=km)
    except CellTimeoutError as e:
        raise SlidesError(f"{src}: a cell ran longer than {timeout} s\n{e}") from e
    except CellExecutionError as e:
        raise SlidesError(f"{src}: a cell failed while executing the deck:\n{e}") from e
    except DeadKernelError as e:
        raise SlidesError(f"{src}: the kernel died while executing the deck: {e}") from e
    finally:
        if km is not None:
            nb.cells.pop(0)
            if getattr(ep, "kc", None) is not None:
                ep.kc.stop_channels()


def build_deck(
    src_ipynb: str | os.PathLike,
    out_dir: str | os.PathLike,
    execute: bool = True,
    timeout: int = 180,
    *,
    theme: str = "white",
    kernel_name: str | None = None,
    home: str | os.PathLike | None = None,
    overwrite: bool = False,
    _shared: _SharedKernel | None = None,
) -> Path:
    """Build one deck to ``out_dir/<name>.html`` (+ ``reveal.js/`` and ``katex/`` beside it).

    ``execute`` runs the notebook first (``timeout`` seconds per cell); otherwise its saved
    outputs are used. The source notebook is never modified. An existing HTML file that
    this function did not generate is only replaced with ``overwrite=True``.
    Returns the path of the HTML file.
    """
    import nbconvert
    import nbformat

    src = Path(src_ipynb)
    if src.suffix != ".ipynb":
        raise ValueError(f"build_deck: expected a .ipynb notebook, got {src}")
    if not src.is_file():
        raise FileNotFoundError(f"build_deck: no such notebook: {src}")
    out = Path(out_dir)
    target = out / f"{src.stem}.html"
    if target.exists() and not overwrite:
        with open(target, encoding="utf-8", errors="replace") as f:
            if GENERATOR_MARK not in f.read(4096):
                raise SlidesError(f"{target} exists and was not built by minivlm.slides; "
                                  "remove it or pass overwrite=True")
    home_p = Path(home).resolve() if home is not None else slides_home()
    versions = ensure_npm_assets(home_p)
    try:
        nb = nbformat.read(str(src), as_version=4)
    except Exception as e:  # nbformat raises several types on bad JSON / schema
        raise SlidesError(f"{src}: not a readable Jupyter notebook ({e})") from e
    if count_slides(nb) == 0:
        raise SlidesError(f"{src}: no visible cells (all are notes/skip/remove_cell)")
    if execute:
        _execute(nb, src, timeout, kernel_name, _shared)

    exporter = _exporter(home_p, theme)
    resources = {
        "metadata": {"name": src.stem, "path": str(src.parent)},
        "minivlm": {
            "katex_url_prefix": KATEX_DIR,
            "reveal_version": versions["reveal.js"],
            "katex_version": versions["katex"],
            "nbconvert_version": nbconvert.__version__,
        },
    }
    html, _ = exporter.from_notebook_node(nb, resources=resources)
    remote = remote_resources(html)
    if remote:
        raise SlidesError(f"{src}: the deck would load from the network: {remote[:5]}")
    out.mkdir(parents=True, exist_ok=True)
    _copy_assets(home_p, out, theme)
    _write_text(target, html)
    return target


def _write_text(target: Path, text: str) -> Path:
    """Atomic write, then the usual permissions (mkstemp files are 0600; decks get served)."""
    atomic_write(target, lambda p: p.write_text(text, encoding="utf-8"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(target, 0o666 & ~umask)
    return target


def _deck_title(src: Path) -> str:
    """First markdown heading of a deck (for the index page)."""
    try:
        nb = json.loads(src.read_text(encoding="utf-8"))
        for cell in nb.get("cells", []):
            if cell.get("cell_type") == "markdown":
                text = "".join(cell.get("source", ""))
                m = re.search(r"^#+\s+(.+)$|<h1[^>]*>(.*?)</h1>", text, re.M | re.S)
                if m:
                    return re.sub(r"<[^>]+>", "", m.group(1) or m.group(2)).strip()
    except (OSError, ValueError):
        pass
    return src.stem


def _write_index(out: Path, decks: list[tuple[Path, Path]]) -> Path:
    items = "\n".join(
        f'<li><a href="{escape(html.name)}">{escape(_deck_title(src))}</a> '
        f'<span>{escape(src.name)}</span></li>' for src, html in decks)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>minivlm lectures</title>
<meta name="generator" content="minivlm.slides">
<style>body{{font-family:system-ui,sans-serif;max-width:46em;margin:3em auto;color:#222}}
h1{{color:#1f5fa8}}li{{margin:.5em 0;font-size:1.15em}}span{{color:#888;font-size:.8em}}
a{{color:#1f5fa8}}</style></head>
<body><h1>minivlm lecture decks</h1><ol>
{items}
</ol><p>Press <b>s</b> in a deck for speaker notes, <b>f</b> for full screen; add
<code>?print-pdf</code> to the address and print to save a PDF.</p></body></html>
"""
    return _write_text(out / "index.html", page)


def build_all(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    execute: bool = True,
    timeout: int = 180,
    share_kernel: bool = True,
    **kwargs: Any,
) -> list[Path]:
    """Build every ``*.ipynb`` directly in ``src_dir`` (names starting with ``_`` or ``.``
    are skipped) into ``out_dir``, plus an ``index.html`` linking them. Returns the decks'
    HTML paths. All decks are attempted; failures are reported together at the end.
    ``share_kernel``: execute the decks one after the other in one kernel, reset between
    decks (see :class:`_SharedKernel`), instead of starting a kernel per deck."""
    src = Path(src_dir)
    if not src.is_dir():
        raise NotADirectoryError(f"build_all: not a directory: {src}")
    sources = sorted(p for p in src.glob("*.ipynb") if not p.name.startswith((".", "_")))
    if not sources:
        raise SlidesError(f"{src}: no deck notebooks (*.ipynb) found")
    built: list[tuple[Path, Path]] = []
    errors: list[str] = []
    shared = None
    try:
        for nb_path in sources:
            t0 = time.perf_counter()
            if execute and share_kernel and shared is None:
                shared = _SharedKernel(kwargs.get("kernel_name") or "python3", src)
            try:
                html = build_deck(nb_path, out_dir, execute=execute, timeout=timeout,
                                  _shared=shared, **kwargs)
            except SlidesError as e:
                errors.append(str(e))
                print(f"minivlm slides: FAILED {nb_path.name}", file=sys.stderr)
                if shared is not None:  # a failed deck may have left it busy or dead
                    shared.close()
                    shared = None
                continue
            built.append((nb_path, html))
            print(f"minivlm slides: {nb_path.name} -> {html} "
                  f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    finally:
        if shared is not None:
            shared.close()
    if built:
        _write_index(Path(out_dir), built)
    if errors:
        raise SlidesError(f"{len(errors)} of {len(sources)} deck(s) failed:\n\n"
                          + "\n\n".join(errors))
    return [html for _, html in built]


# --------------------------------------------------------------------------- CLI


def _cmd_slides(args: argparse.Namespace) -> int:
    src = Path(args.src)
    out = Path(args.out) if args.out else (src if src.is_dir() else src.parent) / "build"
    kw = {"execute": not args.no_execute, "timeout": args.timeout, "theme": args.theme,
          "overwrite": args.overwrite}
    try:
        if src.is_dir():
            paths = build_all(src, out, **kw)
        elif src.suffix == ".ipynb" and src.is_file():
            t0 = time.perf_counter()
            paths = [build_deck(src, out, **kw)]
            print(f"minivlm slides: {src.name} -> {paths[0]} ({time.perf_counter() - t0:.1f} s)",
                  file=sys.stderr)
        else:
            print(f"minivlm slides: error: {src} is neither a folder nor a .ipynb notebook",
                  file=sys.stderr)
            return 2
    except SlidesError as e:
        print(f"minivlm slides: error: {e}", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


def add_cli(subparsers: Any) -> None:
    """Add ``minivlm slides SRC --out DIR``."""
    p = subparsers.add_parser(
        "slides", help="build lecture decks to offline reveal.js HTML",
        description="Execute deck notebooks and export them to reveal.js HTML that works "
                    "offline (reveal.js and KaTeX are copied next to the HTML).")
    p.add_argument("src", help="a deck notebook, or a folder of them (e.g. slides/)")
    p.add_argument("--out", default=None, help="output folder (default: SRC/build)")
    p.add_argument("--no-execute", action="store_true",
                   help="use the outputs saved in the notebooks instead of running them")
    p.add_argument("--timeout", type=int, default=180, help="seconds per cell (default 180)")
    p.add_argument("--theme", default="white", help="reveal.js theme (default white)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing HTML file that minivlm did not build")
    p.set_defaults(func=_cmd_slides)
