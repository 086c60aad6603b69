"""Check a study report (report.html) in a real headless browser: no console error, no network request,
every figure rendered.

The page is opened from disk in Chromium through Playwright (Debian's `chromium` package plus
`pip install playwright`; no browser download: the system binary is used). It listens to console messages,
page errors and every request the page makes (only the report's own file:// URL may appear), waits for
plotly, then counts, per figure div (`figure-N`), the SVG layers plotly drew. Exit status 0 when all holds.

Without a browser (--browser none, or none found) it falls back to a static check: an HTML parser finds no
external <script src>/<link href>, and every figure's plotly JSON parses with data traces.

With --screenshot FIGURE PNG it also saves that figure (e.g. figure-3) as a PNG, as the README's figure was made.

Usage:
    python scripts/check_report.py demo/report.html [--browser auto|chromium|none] [--chromium /usr/bin/chromium]
        [--screenshot figure-3 docs/demo_figure.png]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.external: list[str] = []
        self.figures: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if (tag == "script" and attributes.get("src")) or (tag == "link" and attributes.get("href")):
            self.external.append(attributes.get("src") or attributes.get("href"))
        if tag == "div" and str(attributes.get("id", "")).startswith("figure-"):
            self.figures.append(attributes["id"])


def static_check(path: Path) -> list[str]:
    """Problems found without a browser: external resources, figures whose plotly call does not parse."""
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    problems = [f"external resource {url}" for url in page.external]
    for figure in page.figures:
        match = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(figure) + r'",\s*(\[.*?\]),\s*\{', text, re.S)
        try:
            traces = json.loads(match.group(1)) if match else []
        except json.JSONDecodeError:
            traces = []
        if not traces:
            problems.append(f"{figure}: no parseable plotly data")
    print(f"static check: {len(page.figures)} figures, {len(page.external)} external resources")
    return problems


def browser_check(path: Path, chromium: str, screenshot: tuple[str, Path] | None = None) -> list[str]:
    """Problems seen in headless Chromium: console errors, page errors, requests, figures not drawn."""
    from playwright.sync_api import sync_playwright

    url = path.resolve().as_uri()
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(url, wait_until="load")
        page.wait_for_function("() => window.Plotly !== undefined", timeout=30_000)
        page.wait_for_timeout(1500)
        drawn = page.evaluate("() => Array.from(document.querySelectorAll('div[id^=figure-]')).map(div => "
                              "[div.id, div.querySelectorAll('.main-svg').length, "
                              "div.querySelectorAll('.trace, .hm, .barlayer .point, .scatterlayer .trace').length])")
        if screenshot is not None:
            page.evaluate("id => { const div = document.getElementById(id); div.style.width = '1000px'; "
                          "div.style.height = '460px'; return Plotly.relayout(div, {width: 1000, height: 460}); }",
                          screenshot[0])
            page.wait_for_timeout(500)
            # Clipped to whole pixels: the div's own screenshot took one row of the element below it.
            box = page.locator(f"#{screenshot[0]}").bounding_box()
            page.screenshot(path=str(screenshot[1]), full_page=True,
                            clip={"x": round(box["x"]), "y": round(box["y"]), "width": 1000, "height": 460})
        browser.close()
    problems = [f"console: {e}" for e in errors]
    problems += [f"network request: {r}" for r in requests if r != url]
    problems += [f"{name}: not rendered ({layers} svg layers, {traces} traces)"
                 for name, layers, traces in drawn if layers == 0 or traces == 0]
    print(f"browser check ({chromium}): {len(drawn)} figures rendered "
          f"{sum(1 for _, layers, traces in drawn if layers and traces)}, console errors {len(errors)}, "
          f"requests other than the page {sum(1 for r in requests if r != url)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path)
    parser.add_argument("--browser", choices=("auto", "chromium", "none"), default="auto")
    parser.add_argument("--chromium", default=None, help="the Chromium binary (default: found on PATH)")
    parser.add_argument("--screenshot", nargs=2, metavar=("FIGURE", "PNG"), default=None,
                        help="also save the figure div FIGURE (e.g. figure-3) as PNG (needs the browser)")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"error: {args.report}: no such file", file=sys.stderr)
        return 2
    chromium = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    usable = bool(chromium) and importlib.util.find_spec("playwright") is not None
    if args.browser == "chromium" and not usable:
        print("error: no chromium binary found (apt-get install chromium) or playwright missing "
              "(pip install playwright)", file=sys.stderr)
        return 2
    problems = static_check(args.report)
    if args.browser != "none" and usable:
        shot = (args.screenshot[0], Path(args.screenshot[1])) if args.screenshot else None
        problems += browser_check(args.report, chromium, shot)
    for problem in problems:
        print(f"problem: {problem}")
    print("ok" if not problems else f"FAILED: {len(problems)} problem(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
