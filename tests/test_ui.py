"""The Dagster UI in a real browser: `dagster dev` (webserver and daemon) driven by headless Chromium.

The test starts `dagster dev` on a free localhost port with two external variants, ``ext-a`` and ``ext-b`` (two
tiny Llama checkpoints, PASER_VARIANTS), each with its own unpartitioned keys ``<variant>/<asset>`` in a group
of its own (``ext_a``, ``ext_b``). Through the UI it observes the checkpoints and materializes everything
("Observe all" and "Materialize all" on the global lineage: every asset but the recovery comparison, which
without PASER_RECOVERY is not launchable). It then overwrites ext-a's checkpoint in place (a
re-prune), clicks *Observe* on ``ext-a/pruned_checkpoint``'s page, and checks that the catalog and the lineage
mark exactly ext-a's six model-dependent assets unsynced, nothing of ext-b, of the shared branch or of the
recovery comparison; that "Materialize unsynced" on the lineage offers exactly those six and recomputes exactly
them, in dependency order, in one run; and that afterwards nothing is unsynced.

What the browser shows is read from the page (the *Unsynced* tags of the lineage's asset nodes, the stale
label of the catalog's status column) and cross-checked with Dagster's GraphQL API (``assetNodes { staleStatus
}``, what the UI reads), which is also used to wait for runs. Screenshots go to the test's temporary folder
and, when PASER_UI_SHOTS names a folder, are copied there (``ui-*.png``); their paths are printed at the end.

It needs Debian's `chromium` (`.ci/run` installs it) and the `playwright` Python package (the `dev` extra);
Playwright never downloads a browser here. Without them the test is skipped, with the reason. The helpers
that start `dagster dev` and query it are shared with ``test_ui_stale_graphql.py`` and
``bench/variants_ui.py``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tiny_models import save_tiny_checkpoint

pytestmark = pytest.mark.system

REPRUNED, OTHER = "ext-a", "ext-b"  # the variant whose checkpoint is overwritten, and the one left alone
VARIANTS = (REPRUNED, OTHER)
# The per-variant assets that a variant's checkpoint observation reaches (all direct children of
# `<variant>/pruned_checkpoint`); PASER_RECOVERY is unset, so the recovery comparison is not launched (left out
# of the definitions, or shown as external assets) and is never unsynced.
MODEL_DEPENDENT = (
    "pruned_model",
    "degradation_scores",
    "capability_degradation",
    "selection",
    "concept_graph",
    "selection_export",
)
SHARED_ASSETS = (
    "recovery_pool",
    "instruction_embeddings",
    "manifold",
    "clusters",
    "cluster_profiles",
    "sample_concepts",
    "holdout_split",
)
SOURCES = ("original_model", *(f"{variant}/pruned_checkpoint" for variant in VARIANTS))
# Without the networking flags Chromium keeps trying to reach Google's services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT = 300
OBSERVE_TIMEOUT = 240
RUN_TIMEOUT = 600
UI_TIMEOUT_MS = 90_000
# Dagster draws an asset node in full (name, status, *Unsynced* tag) only at a zoom of 0.6 or more
# (MINIMAL_SCALE in ui-core's AssetGraphExplorer); below that, a coloured box. The whole-graph views are
# sized to fit the graph's width at this zoom.
FULL_NODE_ZOOM = 0.65
# The labels of the catalog's status column for a stale asset (ui-core's Stale.tsx), by stale cause.
CATALOG_STALE_LABELS = re.compile(
    r"Upstream data|Upstream code version|Upstream dependencies|Code version|Data version|Dependencies"
)


def _log(message: str) -> None:
    print(f"[test_ui {time.strftime('%H:%M:%S')}] {message}", flush=True)


def variant_assets(variant: str) -> set[str]:
    return {f"{variant}/{name}" for name in MODEL_DEPENDENT}


def group_of(variant: str) -> str:
    """The variant's Dagster group, as paser_assets.per_variant names it ('-' as '_')."""
    return variant.replace("-", "_")


def chromium_path() -> str | None:
    """CHROMIUM_EXECUTABLE if set, else Debian's Chromium; Playwright cannot download its own browser here."""
    override = os.environ.get("CHROMIUM_EXECUTABLE")
    candidates = [override] if override else ["/usr/bin/chromium", shutil.which("chromium")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _skip(reason: str) -> None:
    print(f"SKIPPED test_ui: {reason}", file=sys.stderr, flush=True)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium through Playwright, or a skip that says why it is not available."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        _skip(f"the playwright package is not installed ({error}); `pip install playwright` (the dev extra)")
    executable = chromium_path()
    if executable is None:
        where = os.environ.get("CHROMIUM_EXECUTABLE") or "/usr/bin/chromium"
        _skip(f"Chromium is not installed ({where} missing); `apt-get install chromium`, as .ci/run does")
    manager = sync_playwright().start()
    try:
        launched = manager.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
    except Exception as error:
        manager.stop()
        _skip(f"Chromium at {executable} cannot be launched by Playwright: {error}")
    _log(f"Chromium {launched.version} at {executable}")
    try:
        yield launched
    finally:
        launched.close()
        manager.stop()


# ----------------------------------------------------------------------------------------------------
# `dagster dev` and its GraphQL API (also used by test_ui_stale_graphql.py and bench/variants_ui.py)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DagsterDev:
    url: str
    env: dict[str, str]  # the environment it runs with: `paser` commands for the same instance use it too
    cwd: Path
    log_path: Path
    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)

    def graphql(self, query: str, variables: dict[str, Any] | None = None, timeout: float = 120) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = json.load(response)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"GraphQL {error.code}: {error.read()[:2000]!r}\nquery: {query}") from None
        assert not payload.get("errors"), f"GraphQL errors: {payload['errors']}"
        return payload["data"]

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def server_env(tmp: Path, original: Path, checkpoints: dict[str, Path]) -> dict[str, str]:
    """The environment of `dagster dev` and of the `paser` commands of a test: its own database, instance,
    caches and exports under ``tmp``, and one external variant per checkpoint (PASER_VARIANTS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PASER_", "DAGSTER_"))}
    env.update(
        {
            "DAGSTER_HOME": str(tmp / "dagster_home"),
            "PASER_DB": str(tmp / "paser.duckdb"),
            "PASER_ORIGINAL_MODEL": str(original),
            "PASER_VARIANTS": ";".join(f"{name}={path}" for name, path in checkpoints.items()),
            "PASER_DEMO_SIZE": "48",
            "PASER_MODEL_CACHE": str(tmp / "model_cache"),
            "PASER_ORIGINAL_CACHE": "0",
            "PASER_EXPORT_DIR": str(tmp / "export"),
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    return env


DAGSTER_YAML = """\
telemetry:
  enabled: false
nux:  # no "Join the Dagster community" dialog over the first page
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
"""


def _default_signals() -> None:  # pragma: no cover - runs in the child before exec
    # The test runner may ignore SIGINT/SIGTERM (and children inherit that); dagster dev needs them to shut down.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start_dagster_dev(env: dict[str, str], cwd: Path, log_path: Path) -> DagsterDev:
    """Start `dagster dev -m paser_assets.definitions` on a free port, in its own process group; returns at once.

    The instance is ``env["DAGSTER_HOME"]``, created with ``DAGSTER_YAML`` if it has no dagster.yaml yet."""
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
    port = free_port()
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster) if dagster.exists() else "dagster", "dev", "-m", "paser_assets.definitions"]
    command += ["-h", "127.0.0.1", "-p", str(port)]
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole at the end
            preexec_fn=_default_signals,
        )
    server = DagsterDev(f"http://127.0.0.1:{port}", env, cwd, log_path, process, started)
    _log(f"dagster dev (pid {process.pid}) on {server.url}, log {log_path}")
    return server


def stop_dagster_dev(server: DagsterDev) -> None:
    """Stop `dagster dev` and everything it started (its own process group): SIGTERM, then SIGKILL."""
    process = server.process
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the webserver, daemon and code servers, whatever is left
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


WORKSPACE_QUERY = """
{ workspaceOrError { __typename
  ... on Workspace { locationEntries { name loadStatus
      locationOrLoadError { __typename ... on PythonError { message stack } } } }
  ... on PythonError { message } } }
"""


def wait_until_loaded(server: DagsterDev, timeout: float = SERVER_START_TIMEOUT) -> float:
    """Wait until the webserver answers and GraphQL reports every code location LOADED; returns the seconds
    since `dagster dev` was started. A code location that fails to load raises with Dagster's error."""
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise AssertionError(f"dagster dev exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            workspace = server.graphql(WORKSPACE_QUERY, timeout=10)["workspaceOrError"]
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            workspace = None
        if workspace is not None:
            assert workspace["__typename"] == "Workspace", workspace
            entries = workspace["locationEntries"]
            for entry in entries:
                loaded = entry["locationOrLoadError"] or {}
                if loaded.get("__typename") == "PythonError":
                    raise AssertionError(
                        f"code location {entry['name']} failed to load: {loaded['message']}\n"
                        + "".join(loaded.get("stack") or [])
                    )
            if entries and all(e["loadStatus"] == "LOADED" and e["locationOrLoadError"] for e in entries):
                return time.monotonic() - server.started
        if time.monotonic() > deadline:
            raise AssertionError(f"dagster dev did not load within {timeout} s:\n{server.log_tail()}")
        time.sleep(0.5)


@contextmanager
def dagster_dev_running(env: dict[str, str], cwd: Path, log_path: Path) -> Iterator[DagsterDev]:
    """`dagster dev` started and loaded, stopped (with all its processes) on the way out."""
    server = start_dagster_dev(env, cwd, log_path)
    try:
        seconds = wait_until_loaded(server)
        _log(f"code location loaded {seconds:.1f} s after `dagster dev` started")
        yield server
    finally:
        stop_dagster_dev(server)
        _log("dagster dev stopped")


ASSET_NODES_QUERY = """
{ assetNodes { assetKey { path } groupName isMaterializable isExecutable isObservable opNames
    dependencyKeys { path } } }
"""
STALE_QUERY = """
{ assetNodes { assetKey { path } staleStatus staleCauses { key { path } reason dependency { path } } } }
"""
LATEST_EVENTS_QUERY = """
{ assetNodes { assetKey { path } assetMaterializations(limit: 1) { timestamp runId }
    assetObservations(limit: 1) { timestamp runId tags { key value } } } }
"""


def key_string(node: dict[str, Any]) -> str:
    return "/".join(node["assetKey"]["path"])


def asset_nodes(server: DagsterDev) -> dict[str, dict[str, Any]]:
    """The asset graph as the webserver serves it, by user key (``ext-a/selection``)."""
    return {key_string(node): node for node in server.graphql(ASSET_NODES_QUERY)["assetNodes"]}


def stale_statuses(server: DagsterDev) -> dict[str, tuple[str, list[str]]]:
    """Every asset's stale status and causes (``<key> <reason>``), as the catalog and the lineage read them."""
    return {
        key_string(node): (
            node["staleStatus"],
            [f"{'/'.join(cause['key']['path'])} {cause['reason']}" for cause in node["staleCauses"]],
        )
        for node in server.graphql(STALE_QUERY)["assetNodes"]
    }


def stale_assets(server: DagsterDev) -> set[str]:
    return {key for key, (status, _) in stale_statuses(server).items() if status != "FRESH"}


def latest_events(server: DagsterDev) -> dict[str, dict[str, Any]]:
    """Per asset: its latest materialization and observation (None when it has none)."""
    found = {}
    for node in server.graphql(LATEST_EVENTS_QUERY)["assetNodes"]:
        materializations, observations = node["assetMaterializations"], node["assetObservations"]
        observation = observations[0] if observations else None
        if observation is not None:
            tags = {tag["key"]: tag["value"] for tag in observation["tags"]}
            observation = {**observation, "data_version": tags.get("dagster/data_version")}
        found[key_string(node)] = {
            "materialization": materializations[0] if materializations else None,
            "observation": observation,
        }
    return found


def source_versions(server: DagsterDev) -> dict[str, str | None]:
    """The observed data version of each observable source (original_model, each `<variant>/pruned_checkpoint`)."""
    events = latest_events(server)
    return {key: (events[key]["observation"] or {}).get("data_version") for key in SOURCES}


def materialized_since(server: DagsterDev, since: float) -> dict[str, float]:
    """The assets materialized after ``since`` (a Unix time), with the time of their latest materialization."""
    found = {}
    for key, event in latest_events(server).items():
        materialization = event["materialization"]
        if materialization is not None and int(materialization["timestamp"]) / 1000 > since:
            found[key] = int(materialization["timestamp"]) / 1000
    return found


RUNS_QUERY = """
{ runsOrError(limit: 100) { ... on Runs { results { runId status assetSelection { path } } } } }
"""
RUN_QUERY = """
query($runId: ID!) { runOrError(runId: $runId) { ... on Run { runId status assetSelection { path }
  stepStats { stepKey status startTime endTime } } } }
"""
RUN_EVENTS_QUERY = """
query($runId: ID!) { runOrError(runId: $runId) { ... on Run { eventConnection { events {
  __typename ... on MessageEvent { message } ... on ExecutionStepFailureEvent { stepKey error { message } }
} } } } }
"""
TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELED"}


def all_runs(server: DagsterDev) -> list[dict[str, Any]]:
    return server.graphql(RUNS_QUERY)["runsOrError"]["results"]


def run_ids(server: DagsterDev) -> set[str]:
    return {run["runId"] for run in all_runs(server)}


def failure_report(server: DagsterDev, runs: list[dict[str, Any]]) -> str:
    """The step and run failures of the unsuccessful runs, and the end of the `dagster dev` log."""
    lines = []
    for run in runs:
        if run["status"] == "SUCCESS":
            continue
        events = server.graphql(RUN_EVENTS_QUERY, {"runId": run["runId"]})["runOrError"]["eventConnection"]["events"]
        lines.append(f"run {run['runId']}: {run['status']}")
        for event in events:
            if event["__typename"] == "ExecutionStepFailureEvent":
                lines.append(f"  {event['stepKey']}: {event['error']['message'].strip()}")
            elif event["__typename"] == "RunFailureEvent":
                lines.append(f"  run: {event['message']}")
    return "\n".join(lines) + f"\n--- dagster dev log ---\n{server.log_tail()}"


def wait_for_runs(
    server: DagsterDev, before: set[str], what: str, timeout: float, settle: Callable[[], bool] = lambda: True
) -> list[dict[str, Any]]:
    """Wait until the runs started after ``before`` have finished and ``settle()`` holds; all must succeed.
    Returns those runs."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for r in all_runs(server) if r["runId"] not in before]
        finished = bool(runs) and all(r["status"] in TERMINAL_RUN for r in runs)
        if finished and any(r["status"] != "SUCCESS" for r in runs):
            pytest.fail(f"{what}: a run failed\n{failure_report(server, runs)}")
        if finished and settle():
            _log(f"{what}: {len(runs)} run(s) succeeded")
            return runs
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not done after {timeout} s: {runs}\n{failure_report(server, runs)}")
        time.sleep(2)


# ----------------------------------------------------------------------------------------------------
# Screenshots


class Shots:
    """Screenshots in the test's temporary folder, copied to PASER_UI_SHOTS (when set) as ``ui-<name>``."""

    def __init__(self, folder: Path, stable: str | None) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stable = Path(stable).expanduser() if stable else None
        if self.stable is not None:
            self.stable.mkdir(parents=True, exist_ok=True)
            for old in self.stable.glob("ui-*.png"):  # an earlier run's
                old.unlink()
        self.paths: list[Path] = []

    def take(self, page: Any, name: str, full_page: bool = False) -> Path:
        path = self.folder / name
        page.screenshot(path=str(path), full_page=full_page)
        self.paths.append(path)
        if self.stable is not None:
            copy = self.stable / f"ui-{name}"
            shutil.copyfile(path, copy)
            self.paths.append(copy)
        _log(f"screenshot {path}")
        return path


# ----------------------------------------------------------------------------------------------------
# The browser side


def open_page(browser: Any, width: int = 1600, height: int = 1000) -> Any:
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(UI_TIMEOUT_MS)
    # dagster.yaml turns off the "Join the Dagster community" dialog; should it show anyway, skip it.
    page.add_locator_handler(
        page.get_by_text("Join the Dagster community"),
        lambda _: page.get_by_role("button", name="Skip").click(),
    )
    return page


def materialize_all_button(page: Any) -> Any:
    return page.get_by_role("button", name=re.compile(r"Materialize all \(\d+\)"))


def open_lineage(page: Any, server: DagsterDev, launchable: int) -> Any:
    """The global asset lineage, unfiltered; returns its "Materialize all (N)" button, N the launchable assets."""
    page.goto(f"{server.url}/asset-groups")
    button = page.get_by_role("button", name=re.compile(rf"Materialize all \({launchable}\)"))
    button.wait_for()
    return button


def open_toolbar_menu(page: Any, materialize_all: Any) -> None:
    materialize_all.locator("xpath=following::button[1]").click()  # the arrow next to "Materialize all"


def observe_all_from_ui(page: Any, server: DagsterDev, launchable: int) -> None:
    from playwright.sync_api import expect

    open_toolbar_menu(page, open_lineage(page, server, launchable))
    page.get_by_role("menuitem", name=f"Observe all ({len(SOURCES)})").click()
    expect(page.get_by_text(re.compile(r"Launched run"))).to_be_visible()


def materialize_all_from_ui(page: Any, server: DagsterDev, launchable: int) -> None:
    """'Materialize all' on the global lineage: one run of every launchable asset (nothing is partitioned)."""
    from playwright.sync_api import expect

    open_lineage(page, server, launchable).click()
    expect(page.get_by_text(re.compile(r"Launched run"))).to_be_visible()


def observe_from_asset_page(page: Any, server: DagsterDev, key: str) -> None:
    """*Observe* on an observable source's page (``/assets/ext-a/pruned_checkpoint``)."""
    from playwright.sync_api import expect

    page.goto(f"{server.url}/assets/{key}")
    page.get_by_text("Latest observation").wait_for()
    page.get_by_role("button", name=re.compile(r"\bObserve$")).click()
    expect(page.get_by_text(re.compile(r"Launched run"))).to_be_visible()


# Per asset node of the lineage: its group (the expanded group box it lies in), name, whether it is drawn in
# full, its status row and its *Unsynced* tag. Dagster draws each node in an SVG foreignObject.
LINEAGE_NODES_JS = """
groupNames => {
  const objects = [...document.querySelectorAll('svg foreignObject')];
  const box = f => ({x: +f.getAttribute('x'), y: +f.getAttribute('y'),
                     w: +f.getAttribute('width'), h: +f.getAttribute('height')});
  const groups = objects.filter(f => f.classList.contains('group')).map(f => {
    const text = (f.textContent || '').trim();
    const name = groupNames.filter(g => text.startsWith(g)).sort((a, b) => b.length - a.length)[0] || null;
    return {...box(f), name};
  });
  const nodes = objects.filter(f => f.querySelector('[class*="AssetNode_assetNodeContainer"]'));
  return nodes.map(f => {
    const b = box(f);
    const group = groups.find(g => b.x >= g.x && b.y >= g.y && b.x <= g.x + g.w && b.y <= g.y + g.h);
    const label = f.querySelector('[class*="AssetNode_assetName"] [data-tooltip]');
    const texts = [...f.querySelectorAll('span, div')].map(e => e.childElementCount ? '' : e.textContent.trim());
    return {
      group: group ? group.name : null,
      name: label ? label.getAttribute('data-tooltip') : null,
      full: !f.querySelector('[class*="minimalAssetNodeBox"]'),
      unsynced: texts.find(t => /^Unsynced/.test(t)) || null,
      materialized: texts.includes('Materialized'),
      observed: texts.includes('Observed'),
    };
  });
}
"""


def record_stale_answers(page: Any) -> list[float]:
    """When the page received answers to the UI's stale status query (what the Unsynced tags are drawn from)."""
    answers: list[float] = []

    def received(response: Any) -> None:
        if "op=AssetStaleStatusDataQuery" in response.url:
            answers.append(time.monotonic())

    page.on("response", received)
    return answers


def _graph_size(page: Any) -> tuple[float, float, float, float]:
    """The lineage's layout (width, height, in graph units) and where its viewport starts on the page."""
    return tuple(
        page.evaluate(
            """() => {
              const svg = [...document.querySelectorAll('svg')].find(s => (s.parentElement.getAttribute('style') || '')
                  .includes('transform'));
              const area = svg.parentElement.parentElement.getBoundingClientRect();
              return [+svg.getAttribute('width'), +svg.getAttribute('height'), area.left, area.top];
            }"""
        )
    )


def _expand_all_groups(page: Any) -> None:
    page.get_by_role("button", name="settings", exact=True).click()  # the graph's settings, not the nav's
    page.get_by_role("menuitem", name=re.compile("Expand all groups")).click()


def lineage_nodes(browser: Any, server: DagsterDev, group: str | None, shots: Shots, name: str) -> list[dict[str, Any]]:
    """The global lineage, whole with every group expanded or filtered to ``group``, in a viewport sized so that
    every asset node is drawn in full: the nodes as the page shows them, once their statuses have loaded."""
    graph = asset_nodes(server)
    shown = {key for key, node in graph.items() if group is None or node["groupName"] == group}
    events = latest_events(server)
    with_status = sum(1 for key in shown if events[key]["materialization"] or events[key]["observation"])
    groups = sorted({node["groupName"] for node in graph.values()})
    page = open_page(browser, 1800, 1200)
    stale_answers = record_stale_answers(page)
    try:
        path = "/asset-groups" if group is None else f"/asset-groups~{urllib.parse.quote(f'group:{group}')}/"
        page.goto(f"{server.url}{path}")
        materialize_all_button(page).wait_for()
        if group is None:  # a view filtered to one group draws its assets without the group's box
            _expand_all_groups(page)
        page.wait_for_timeout(1000)
        width, height, left, top = _graph_size(page)
        # Fit-width (the lineage's initial zoom) at FULL_NODE_ZOOM, and tall enough for the whole graph.
        size = {
            "width": math.ceil(left + width * FULL_NODE_ZOOM + 40),
            "height": math.ceil(top + height * FULL_NODE_ZOOM + 80),
        }
        page.set_viewport_size(size)
        loaded = time.monotonic()
        page.reload()
        materialize_all_button(page).wait_for()
        # Wait until every node is drawn in full and shows its status, and the stale statuses have been fetched.
        deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
        while True:
            nodes = page.evaluate(LINEAGE_NODES_JS, groups)
            statuses = sum(n["materialized"] or n["observed"] for n in nodes)
            ready = (
                len(nodes) == len(shown)
                and all(n["full"] and (n["group"] or group) and n["name"] for n in nodes)
                and statuses >= with_status
                and any(t > loaded for t in stale_answers)
            )
            if ready:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"lineage {group or 'all'}: {len(nodes)} of {len(shown)} nodes drawn, {statuses} of "
                    f"{with_status} statuses shown (viewport {size}): {nodes}"
                )
            page.wait_for_timeout(500)
        page.wait_for_timeout(1500)  # the tags render after the stale status answer
        nodes = [{**node, "group": node["group"] or group} for node in page.evaluate(LINEAGE_NODES_JS, groups)]
        shots.take(page, name)
        _log(f"lineage {group or 'all'}: {len(nodes)} nodes at viewport {size['width']}x{size['height']}")
        return nodes
    finally:
        page.close()


def _expected_status_count(server: DagsterDev) -> int:
    """How many assets have a materialization or an observation: the catalog shows their status."""
    return sum(1 for event in latest_events(server).values() if event["materialization"] or event["observation"])


def unsynced_in_lineage(nodes: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(node["group"], node["name"]) for node in nodes if node["unsynced"]}


def as_lineage_labels(keys: set[str], nodes_by_key: dict[str, dict[str, Any]]) -> set[tuple[str, str]]:
    """(group, displayed name) of asset keys, as the lineage labels their nodes (the key's last component)."""
    return {(nodes_by_key[key]["groupName"], key.rsplit("/", 1)[-1]) for key in keys}


CATALOG_ROWS_JS = """
() => [...document.querySelectorAll('[class*="VirtualizedTable_row"]')].map(row => {
  const link = row.querySelector('a[href^="/assets/"]');
  const yellow = [...row.querySelectorAll('[style*="text-yellow"]')].map(e => e.textContent.trim()).filter(t => t);
  return {
    key: link ? decodeURIComponent(new URL(link.href).pathname.replace(/^\\/assets\\//, '')) : null,
    stale: yellow.join(' '),
    text: row.innerText,
  };
})
"""


def catalog_rows(browser: Any, server: DagsterDev, shots: Shots, name: str) -> dict[str, dict[str, Any]]:
    """The catalog (*Assets*), every row in view, once every asset's status has loaded: by asset key."""
    count = len(asset_nodes(server))
    page = open_page(browser, 1800, 200 + 72 * count)
    stale_answers = record_stale_answers(page)
    try:
        loaded = time.monotonic()
        page.goto(f"{server.url}/assets")
        expected_shown = _expected_status_count(server)
        deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
        while True:
            rows = page.evaluate(CATALOG_ROWS_JS)
            shown = sum(bool(re.search(r"\b(Materialized|Observed)\b", row["text"])) for row in rows)
            if len(rows) == count and shown >= expected_shown and any(t > loaded for t in stale_answers):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"catalog: {len(rows)} of {count} rows, {shown} of {expected_shown} statuses")
            page.wait_for_timeout(500)
        page.wait_for_timeout(1500)
        rows = page.evaluate(CATALOG_ROWS_JS)
        shots.take(page, name)
        return {row["key"]: row for row in rows}
    finally:
        page.close()


def stale_in_catalog(rows: dict[str, dict[str, Any]]) -> set[str]:
    return {key for key, row in rows.items() if CATALOG_STALE_LABELS.search(row["stale"])}


def check_asset_page_unsynced(browser: Any, server: DagsterDev, key: str, cause: str, shots: Shots, name: str) -> None:
    """The asset's page carries the *Unsynced* tag, whose popover names the new data version of ``cause``."""
    from playwright.sync_api import expect

    page = open_page(browser)
    try:
        page.goto(f"{server.url}/assets/{key}")
        tag = page.get_by_text(re.compile(r"^Unsynced \(\d+\)$"))
        expect(tag).to_be_visible()
        tag.hover()
        expect(page.get_by_text("1 upstream data version change")).to_be_visible()
        expect(page.get_by_text("has a new data version")).to_be_visible()
        # The popover links the cause, labelled as the UI writes keys ("ext-a / pruned_checkpoint").
        link = page.get_by_role("link", name=cause.replace("/", " / "))
        expect(link.last).to_be_visible()
        assert link.last.get_attribute("href") == f"/assets/{cause}", link.last.get_attribute("href")
        shots.take(page, name)
    finally:
        page.close()


def materialize_unsynced_from_ui(
    page: Any, server: DagsterDev, launchable: int, expected: set[str], shots: Shots, name: str
) -> None:
    """*Materialize unsynced* (the arrow next to *Materialize all* on the lineage): its dialog lists exactly
    ``expected``; launch it."""
    from playwright.sync_api import expect

    open_toolbar_menu(page, open_lineage(page, server, launchable))
    page.get_by_role("menuitem", name="Materialize unsynced").click()
    dialog = page.get_by_role("dialog").filter(has_text="Materialize unsynced assets")
    launch = dialog.get_by_role("button", name=f"Materialize {len(expected)} assets")
    expect(launch).to_be_visible()
    known = set(asset_nodes(server))  # the dialog writes keys as "ext-a / selection"
    listed = {key for line in dialog.inner_text().splitlines() if (key := line.strip().replace(" / ", "/")) in known}
    assert listed == expected, f"Materialize unsynced lists {sorted(listed)}, not {sorted(expected)}"
    page.wait_for_timeout(500)
    shots.take(page, name)
    launch.click()
    expect(page.get_by_text(re.compile(r"Launched run"))).to_be_visible()


def check_dependency_order(server: DagsterDev, run_id: str, recomputed: dict[str, float]) -> list[str]:
    """Each recomputed asset's step started after the steps of its recomputed parents ended, and its
    materialization came after theirs; returns the steps in the order they ran."""
    run = server.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
    nodes = asset_nodes(server)
    steps = {step["stepKey"]: step for step in run["stepStats"]}
    assert all(step["status"] == "SUCCESS" for step in steps.values()), steps
    step_of = {key: nodes[key]["opNames"][0] for key in recomputed}
    # The run's steps: one per op of the recomputed assets, and one per asset check of theirs.
    checks = {s for s in steps if s not in step_of.values() and any(s.startswith(f"{op}_") for op in step_of.values())}
    assert set(steps) == set(step_of.values()) | checks, (step_of, sorted(steps))
    edges = [
        (parent, child)
        for child in recomputed
        for parent in ("/".join(dep["path"]) for dep in nodes[child]["dependencyKeys"])
        if parent in recomputed and step_of[parent] != step_of[child]
    ]
    assert len(edges) >= len(MODEL_DEPENDENT) - 2, edges  # the six assets are a chain of five steps
    for parent, child in edges:
        before, after = steps[step_of[parent]], steps[step_of[child]]
        assert before["endTime"] <= after["startTime"], f"{child} started before {parent} ended: {before} {after}"
        assert recomputed[parent] < recomputed[child], f"{child} materialized before {parent}: {recomputed}"
    order = [step["stepKey"] for step in sorted(steps.values(), key=lambda step: step["startTime"])]
    _log(f"steps in order: {order}; {len(edges)} dependency edges respected")
    return order


# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny Llama checkpoints, one per variant, different weights."""
    root = tmp_path_factory.mktemp("ui-checkpoints")
    return {variant: save_tiny_checkpoint(root / variant, seed=seed) for seed, variant in enumerate(VARIANTS, 1)}


@pytest.fixture(scope="module")
def dagster_dev(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, checkpoints: dict[str, Path]
) -> Iterator[DagsterDev]:
    tmp = tmp_path_factory.mktemp("ui")
    env = server_env(tmp, tiny_llama_dir, checkpoints)
    try:
        with dagster_dev_running(env, tmp, tmp / "dagster-dev.log") as server:
            yield server
    except AssertionError as error:  # it did not start: fail with Dagster's words
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Shots:
    return Shots(tmp_path_factory.mktemp("ui-shots"), os.environ.get("PASER_UI_SHOTS"))


def test_ui_reprune_one_variant_shows_exactly_its_assets_unsynced_and_materialize_unsynced_recomputes_them(
    browser: Any,
    dagster_dev: DagsterDev,
    checkpoints: dict[str, Path],
    shots: Shots,
    record_property: Callable[[str, object], None],
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    server, started = dagster_dev, time.monotonic()
    nodes = asset_nodes(server)
    launchable = {key for key, node in nodes.items() if node["isMaterializable"] and node["isExecutable"]}
    expected_stale = variant_assets(REPRUNED)
    # The graph the webserver loaded: plain keys for the shared branch, `<variant>/<asset>` in the variant's group.
    assert launchable == {*SHARED_ASSETS, *variant_assets(REPRUNED), *variant_assets(OTHER)}, sorted(launchable)
    assert {key for key, node in nodes.items() if node["isObservable"]} == set(SOURCES)
    for variant in VARIANTS:
        assert {k for k, n in nodes.items() if n["groupName"] == group_of(variant)} >= {
            f"{variant}/pruned_checkpoint",
            *variant_assets(variant),
        }
        for key in variant_assets(variant):  # the observation reaches every one of them directly
            assert [f"{variant}/pruned_checkpoint"] == [
                "/".join(d["path"]) for d in nodes[key]["dependencyKeys"] if d["path"][-1] == "pruned_checkpoint"
            ], (key, nodes[key]["dependencyKeys"])
    not_launched = {key for key, node in nodes.items() if not node["isExecutable"]}  # external recovery assets, if any
    page = open_page(browser)
    try:
        # 1. Observe the checkpoints, then materialize everything, from the lineage's toolbar.
        before = run_ids(server)
        observe_all_from_ui(page, server, len(launchable))
        wait_for_runs(
            server, before, "observe all", OBSERVE_TIMEOUT, lambda: None not in source_versions(server).values()
        )
        before = run_ids(server)
        materialize_all_from_ui(page, server, len(launchable))
        runs = wait_for_runs(server, before, "materialize all", RUN_TIMEOUT)
        assert len(runs) == 1, runs  # nothing is partitioned: one run, no backfill
        events = latest_events(server)
        assert {key for key in launchable if events[key]["materialization"] is None} == set()
        assert all(events[key]["materialization"] is None for key in not_launched), "recovery assets were launched"
        assert stale_assets(server) == set(), stale_statuses(server)
        _log(f"everything materialized after {time.monotonic() - started:.0f} s")

        lineage = lineage_nodes(browser, server, None, shots, "01-lineage-all-materialized.png")
        assert unsynced_in_lineage(lineage) == set(), lineage
        catalog = catalog_rows(browser, server, shots, "02-catalog-materialized.png")
        assert set(catalog) == set(nodes), sorted(set(catalog) ^ set(nodes))
        assert stale_in_catalog(catalog) == set(), {k: r["stale"] for k, r in catalog.items() if r["stale"]}

        # 2. Re-prune ext-a in place (other weights, same folder) and click Observe on its checkpoint's page.
        versions = source_versions(server)
        save_tiny_checkpoint(checkpoints[REPRUNED], seed=len(VARIANTS) + 1)
        before = run_ids(server)
        observe_from_asset_page(page, server, f"{REPRUNED}/pruned_checkpoint")
        changed = f"{REPRUNED}/pruned_checkpoint"
        wait_for_runs(
            server,
            before,
            f"observe {changed}",
            OBSERVE_TIMEOUT,
            lambda: source_versions(server)[changed] not in (None, versions[changed]),
        )
        observed_at = time.time()
        after = source_versions(server)
        assert {key for key in SOURCES if after[key] != versions[key]} == {changed}, (versions, after)

        statuses = stale_statuses(server)
        assert stale_assets(server) == expected_stale, {k: v for k, v in statuses.items() if v[0] != "FRESH"}
        for key in expected_stale:
            assert f"{changed} has a new data version" in statuses[key][1], (key, statuses[key])
        _log(f"GraphQL after the observation: stale = {sorted(expected_stale)}")

        lineage = lineage_nodes(browser, server, None, shots, "03-lineage-all-after-reprune.png")
        assert unsynced_in_lineage(lineage) == as_lineage_labels(expected_stale, nodes), lineage
        group = lineage_nodes(browser, server, group_of(REPRUNED), shots, "04-lineage-ext_a-after-reprune.png")
        assert unsynced_in_lineage(group) == as_lineage_labels(expected_stale, nodes), group
        catalog = catalog_rows(browser, server, shots, "05-catalog-after-reprune.png")
        assert stale_in_catalog(catalog) == expected_stale, {k: r["stale"] for k, r in catalog.items() if r["stale"]}
        assert all(catalog[key]["stale"] == "Upstream data" for key in expected_stale), catalog
        check_asset_page_unsynced(
            browser, server, f"{REPRUNED}/selection", changed, shots, "06-selection-page-unsynced.png"
        )

        # 3. "Materialize unsynced" on the lineage: exactly the six, one run, in dependency order.
        before = run_ids(server)
        materialize_unsynced_from_ui(
            page, server, len(launchable), expected_stale, shots, "07-materialize-unsynced-dialog.png"
        )
        runs = wait_for_runs(
            server,
            before,
            "materialize unsynced",
            RUN_TIMEOUT,
            lambda: set(materialized_since(server, observed_at)) >= expected_stale,
        )
        assert len(runs) == 1, runs
        assert {"/".join(k["path"]) for k in runs[0]["assetSelection"]} == expected_stale, runs[0]
        recomputed = materialized_since(server, observed_at)
        assert set(recomputed) == expected_stale, sorted(recomputed)  # nothing of ext-b or the shared branch
        order = check_dependency_order(server, runs[0]["runId"], recomputed)
        record_property("materialize_unsynced_steps", order)

        # 4. Nothing is unsynced any more, in GraphQL, the lineage and the catalog.
        assert stale_assets(server) == set(), {k: v for k, v in stale_statuses(server).items() if v[0] != "FRESH"}
        lineage = lineage_nodes(browser, server, None, shots, "08-lineage-all-after-materialize.png")
        assert unsynced_in_lineage(lineage) == set(), lineage
        group = lineage_nodes(browser, server, group_of(REPRUNED), shots, "09-lineage-ext_a-after-materialize.png")
        assert unsynced_in_lineage(group) == set(), group
        catalog = catalog_rows(browser, server, shots, "10-catalog-after-materialize.png")
        assert stale_in_catalog(catalog) == set(), {k: r["stale"] for k, r in catalog.items() if r["stale"]}
    except BaseException:  # pytest.fail raises a BaseException
        if not page.is_closed():
            shots.take(page, "failure.png")
        raise
    finally:
        page.close()
        record_property("screenshots", [str(path) for path in shots.paths])
        print("\nscreenshots:\n" + "\n".join(f"  {path}" for path in shots.paths), flush=True)
    _log(f"UI test done in {time.monotonic() - started:.0f} s")
