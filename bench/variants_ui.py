"""How the Dagster UI copes with many variants: definitions load time and lineage render time.

Run by hand: ``.venv/bin/python bench/variants_ui.py`` (``--variants N``, default 20). Each variant is a built-in
pruning recipe (magnitude and wanda at sparsities 0.1 .. 0.9, then 2:4 patterns), so no checkpoint is needed:
nothing is materialized, only the definitions are built and drawn. The variants are configured through
PASER_VARIANTS and also written to the DuckDB registry (``sync_variants``, what `paser variants add
--no-materialize` records), so that a load reads the registry table as it does in use. Measured:

- ``build_definitions()`` in this process (the imports done first), median of ``--repeat`` calls, alone and
  with Dagster resolving the asset graph (``Definitions.get_repository_def()``, its validation);
- `dagster dev -m paser_assets.definitions`: seconds from its start until GraphQL reports the code location
  LOADED, then ``reloadWorkspace`` (what `paser variants add` asks the webserver for) until LOADED again;
- in headless Chromium, a fresh browser context each time: the global lineage (``/asset-groups``) in its default
  view (groups collapsed) until group boxes are drawn; with every group expanded until the expanded layout is
  drawn (Dagster fits the layout's width and shows its middle, which with many variants is a tall column in
  which no asset node may be in view: its size is printed); the lineage filtered to one variant's group until
  its asset nodes are drawn; the catalog (``/assets``) until its first row is drawn. A page that does not draw
  within ``--browser-timeout`` is reported with a screenshot.

One line per measurement (``name: value``), the CPU (``lscpu`` model name) and load average first. The
helpers that start `dagster dev` are tests/test_ui.py's; the browser is Debian's Chromium (CHROMIUM_EXECUTABLE).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from test_ui import (  # noqa: E402
    CHROMIUM_ARGS,
    chromium_path,
    group_of,
    server_env,
    start_dagster_dev,
    stop_dagster_dev,
    wait_until_loaded,
)
from tiny_models import save_tiny_checkpoint  # noqa: E402

RELOAD = """mutation { reloadWorkspace { __typename ... on PythonError { message } } }"""


def recipes(count: int) -> dict[str, str]:
    """``count`` recipe variants: mag10..mag90, wanda10..wanda90, then N:M patterns; names with '-' too."""
    specs = [(f"mag{p}", f"magnitude:0.{p // 10}") for p in range(10, 100, 10)]
    specs += [(f"wanda{p}", f"wanda:0.{p // 10}") for p in range(10, 100, 10)]
    specs += [(f"{m}-{n}-{d}", f"{m}:{n}:{d}") for n, d in ((2, 4), (4, 8), (1, 4)) for m in ("magnitude", "wanda")]
    if count > len(specs):
        raise SystemExit(f"at most {len(specs)} variants")
    return dict(specs[:count])


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    match = re.search(r"^Model name:\s*(.+)$", out, flags=re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def line(name: str, value: str) -> None:
    print(f"{name}: {value}", flush=True)


def seconds(values: list[float]) -> str:
    if not values:
        return "no measurement (see above)"
    return f"median {statistics.median(values):.2f} s of {len(values)} ({', '.join(f'{v:.2f}' for v in values)})"


def in_process(env: dict[str, str], repeat: int) -> tuple[list[float], list[float], int]:
    """build_definitions() timings, alone and with the asset graph resolved, and the number of assets."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        from paser_assets.graph import build_definitions
        from paser_assets.registry import sync_variants
        from paser_assets.resources import PaserConfig, PaserDuckDB

        sync_variants(PaserDuckDB.from_env(), PaserConfig.from_env())  # the registry table, as `variants add` does
        build_definitions()  # a first call pays for lazy imports: not counted
        built, resolved, assets = [], [], 0
        for _ in range(repeat):
            start = time.perf_counter()
            defs = build_definitions()
            built.append(time.perf_counter() - start)
            start = time.perf_counter()
            assets = len(defs.get_repository_def().asset_graph.get_all_asset_keys())
            resolved.append(built[-1] + time.perf_counter() - start)
        return built, resolved, assets
    finally:
        os.environ.clear()
        os.environ.update(saved)


def reload_seconds(server) -> float:
    start = time.monotonic()
    answer = server.graphql(RELOAD, timeout=600)["reloadWorkspace"]
    assert answer["__typename"] == "Workspace", answer
    server.started = start
    return wait_until_loaded(server)


def timed(page, start: float, found: list[float], what: str, wait, shot: Path) -> bool:
    """Seconds from ``start`` until ``wait(page)`` returns, appended to ``found``; False (and a screenshot) when
    it timed out."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        wait(page)
    except PlaywrightTimeout:
        page.screenshot(path=str(shot))
        line(what, f"not drawn within {time.monotonic() - start:.0f} s; screenshot {shot}")
        return False
    found.append(time.monotonic() - start)
    return True


def drawn(selector: str):
    """A wait for the first element matching ``selector`` to be drawn."""
    return lambda page: page.locator(selector).first.wait_for()


GROUP_BOX = "svg foreignObject.group"  # a group box of the lineage (boxes off screen are not drawn)
ASSET_NODE = 'svg foreignObject [class*="AssetNode_assetNodeContainer"]'
CATALOG_ROW = '[class*="VirtualizedTable_row"] a[href^="/assets/"]'
# The lineage's SVG (its width and height are the layout's, in graph units).
LAYOUT_JS = """() => { const svg = [...document.querySelectorAll('svg')].find(s =>
    (s.parentElement.getAttribute('style') || '').includes('transform'));
  return svg ? [+svg.getAttribute('width'), +svg.getAttribute('height')] : null; }"""


def browser_timings(url: str, repeat: int, group: str, shots: Path, timeout_s: float) -> dict[str, list]:
    """Per page, the seconds until it is drawn, in a fresh browser context each time; ``layouts``: the lineage's
    (width, height) collapsed and expanded."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise SystemExit("Chromium is not installed (/usr/bin/chromium or CHROMIUM_EXECUTABLE)")
    found: dict[str, list] = {"collapsed": [], "expanded": [], "group": [], "catalog": [], "layouts": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            for attempt in range(repeat):
                context = browser.new_context(viewport={"width": 1800, "height": 1200})
                page = context.new_page()
                page.set_default_timeout(timeout_s * 1000)
                start = time.monotonic()
                page.goto(f"{url}/asset-groups", wait_until="commit")
                if timed(
                    page, start, found["collapsed"], "lineage", drawn(GROUP_BOX), shots / f"lineage-{attempt}.png"
                ):
                    collapsed = page.evaluate(LAYOUT_JS)
                    page.get_by_role("button", name="settings", exact=True).click()
                    page.get_by_role("menuitem", name=re.compile("Expand all groups")).click()  # in localStorage
                    page.wait_for_timeout(500)
                    start = time.monotonic()
                    page.reload(wait_until="commit")

                    def expanded_layout(page, collapsed=collapsed) -> None:
                        page.wait_for_function(f"() => {{ const size = ({LAYOUT_JS})(); "
                                               f"return size && size[1] > 2 * {collapsed[1]}; }}")  # fmt: skip

                    shot = shots / f"expanded-{attempt}.png"
                    if timed(page, start, found["expanded"], "expanded lineage", expanded_layout, shot):
                        found["layouts"].append((collapsed, page.evaluate(LAYOUT_JS)))
                start = time.monotonic()
                page.goto(f"{url}/asset-groups~{urllib.parse.quote(f'group:{group}')}/", wait_until="commit")
                timed(page, start, found["group"], "variant group", drawn(ASSET_NODE), shots / f"group-{attempt}.png")
                start = time.monotonic()
                page.goto(f"{url}/assets", wait_until="commit")
                timed(page, start, found["catalog"], "catalog", drawn(CATALOG_ROW), shots / f"catalog-{attempt}.png")
                context.close()
        finally:
            browser.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--browser-timeout", type=float, default=180, help="seconds to wait for a page to draw")
    parser.add_argument("--shots", type=Path, default=None, help="where to save a screenshot of a page that timed out")
    args = parser.parse_args()

    line("cpu", f"{cpu_model()} ({os.cpu_count()} logical CPUs)")
    line("load average at start", " ".join(f"{value:.2f}" for value in os.getloadavg()))
    with tempfile.TemporaryDirectory(prefix="variants-ui-") as folder:
        tmp = Path(folder)
        original = save_tiny_checkpoint(tmp / "original")
        env = server_env(tmp, original, {})
        variants = recipes(args.variants)
        env["PASER_VARIANTS"] = ";".join(f"{name}={spec}" for name, spec in variants.items())
        line("variants", f"{len(variants)}: {', '.join(variants)}")

        built, resolved, assets = in_process(env, args.repeat)
        line("assets in the definitions", str(assets))
        line("build_definitions() in-process", seconds(built))
        line("build_definitions() + get_repository_def() in-process", seconds(resolved))

        server = start_dagster_dev(env, tmp, tmp / "dagster-dev.log")
        try:
            line("dagster dev start until the code location is LOADED", f"{wait_until_loaded(server):.2f} s")
            line("reloadWorkspace until LOADED", seconds([reload_seconds(server) for _ in range(args.repeat)]))
            shots = args.shots or tmp / "shots"
            shots.mkdir(parents=True, exist_ok=True)
            group = group_of(next(iter(variants)))
            timings = browser_timings(server.url, args.repeat, group, shots, args.browser_timeout)
            line("lineage (default view: groups collapsed) until group boxes are drawn", seconds(timings["collapsed"]))
            line("lineage with every group expanded until its layout is drawn", seconds(timings["expanded"]))
            for collapsed, expanded in timings["layouts"][:1]:
                size = "{:.0f} x {:.0f} graph units (collapsed: {:.0f} x {:.0f})".format(*expanded, *collapsed)
                line("lineage layout with every group expanded", f"{size}; fit to width, its middle is in view")
            line(
                f"lineage filtered to one variant (group:{group}) until its asset nodes are drawn",
                seconds(timings["group"]),
            )
            line("catalog until its first row is drawn", seconds(timings["catalog"]))
        finally:
            stop_dagster_dev(server)
    line("load average at end", " ".join(f"{value:.2f}" for value in os.getloadavg()))


if __name__ == "__main__":
    main()
