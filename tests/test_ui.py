"""The Dagster UI in a real browser: `dagster dev` (webserver and daemon) driven by headless Chromium.

The test starts `dagster dev` on a free localhost port with tiny models and, through the UI, observes
the model checkpoints, materializes the demo graph ("Materialize all" on the global lineage: every asset
but the recovery group, which is not launchable without PASER_RECOVERY, as one backfill over all
partitions), opens the `clusters` asset and checks that the cluster map renders, then overwrites the
pruned checkpoint, observes it again and checks that the score assets of the variant show as unsynced
(stale) on their partition pages while `clusters` does not, and that the catalog, the lineage and
"Materialize unsynced" do not show them (Dagster 1.13 has no asset-level stale status for a partitioned
asset: the README says so, and this test fails when that changes). It then filters the lineage to
`pruned_checkpoint+` and launches "Materialize all" for the variant, the README's way, and checks that this
backfill recomputes exactly the unsynced partitions (and nothing of the semantic branch), and that the
report (`report.html`) and the charts in the metadata render. Dagster's
GraphQL API (what the UI itself calls) is used only to wait for runs and to confirm what the UI shows.
Screenshots go to `test-artifacts/ui/`.

It needs Debian's `chromium` (`.ci/run` installs it) and the `playwright` Python package (the
`dev` extra); Playwright never downloads a browser here. Without them the test is skipped, with
the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paser_cli import run_paser
from tiny_models import save_tiny_checkpoint

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "ui"
VARIANT = "external"  # the single variant of PASER_PRUNED_MODEL
SCORE_PARTITION = f"0|{VARIANT}"  # degradation_scores: shard 0 of the variant
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
# The per-variant assets that read the pruned model: stale after a re-prune. (asset, partition)
MODEL_DEPENDENT = [
    ("pruned_model", VARIANT),
    ("degradation_scores", SCORE_PARTITION),
    ("capability_degradation", VARIANT),
    ("selection", VARIANT),
    ("concept_graph", VARIANT),
    ("selection_export", VARIANT),
]
# Checked in the UI as well as through GraphQL.
SCORE_ASSETS = [("degradation_scores", SCORE_PARTITION), ("capability_degradation", VARIANT), ("selection", VARIANT)]
SHARED_ASSETS = [
    "recovery_pool",
    "instruction_embeddings",
    "manifold",
    "clusters",
    "cluster_profiles",
    "sample_concepts",
]
# The demo graph: everything but the recovery assets (LoRA fine-tunes and their evaluation, slow on a CPU): without
# PASER_RECOVERY they are in the lineage but not launchable, so "Materialize all" leaves them out.
DEMO_EXCLUDED_GROUPS = {"recovery"}
SERVER_START_TIMEOUT = 240
OBSERVE_TIMEOUT = 240
BACKFILL_TIMEOUT = 600
UI_TIMEOUT_MS = 60_000


def _log(message: str) -> None:
    print(f"[test_ui {time.strftime('%H:%M:%S')}] {message}", flush=True)


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
# `dagster dev` and its GraphQL API


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DagsterDev:
    url: str
    pruned_dir: Path
    log_path: Path
    process: subprocess.Popen

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                payload = json.load(response)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"GraphQL {error.code}: {error.read()[:2000]!r}\nquery: {query}") from None
        assert not payload.get("errors"), f"GraphQL errors: {payload['errors']}"
        return payload["data"]

    def demo_assets(self) -> list[str]:
        """The materializable assets of the demo graph, from Dagster's GraphQL API."""
        nodes = self.graphql("{ assetNodes { assetKey { path } groupName isMaterializable } }")["assetNodes"]
        return sorted(
            "/".join(n["assetKey"]["path"])
            for n in nodes
            if n["isMaterializable"] and n["groupName"] not in DEMO_EXCLUDED_GROUPS
        )

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _server_env(tmp: Path, original: Path, pruned: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PASER_", "DAGSTER_"))}
    env.update(
        {
            "DAGSTER_HOME": str(tmp / "dagster_home"),
            "PASER_DB": str(tmp / "paser.duckdb"),
            "PASER_ORIGINAL_MODEL": str(original),
            "PASER_PRUNED_MODEL": str(pruned),
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


def _stop_group(process: subprocess.Popen) -> None:
    """Stop `dagster dev` and everything it started (its own process group): SIGTERM, then SIGKILL."""
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


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[DagsterDev]:
    tmp = tmp_path_factory.mktemp("ui")
    pruned = save_tiny_checkpoint(tmp / "pruned", seed=1)
    home = tmp / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    env = _server_env(tmp, tiny_llama_dir, pruned)

    # Register the variant (DuckDB registry and the instance's dynamic partition) before the server
    # starts, instead of waiting for the paser_variants sensor.
    listed = run_paser(["variants", "list"], env, tmp, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert f"{VARIANT}\tcheckpoint" in listed.stdout, listed.stdout

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):  # screenshots of an earlier run
        old.unlink()
    log_path = ARTIFACTS / "dagster-dev.log"
    port = free_port()
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster) if dagster.exists() else "dagster", "dev", "-m", "paser_assets.definitions"]
    command += ["-h", "127.0.0.1", "-p", str(port)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole at teardown
            preexec_fn=_default_signals,
        )
    server = DagsterDev(f"http://127.0.0.1:{port}", pruned, log_path, process)
    _log(f"dagster dev (pid {process.pid}) on {server.url}, log {log_path}")
    try:
        _wait_for_server(server)
        yield server
    finally:
        _stop_group(process)
        _log("dagster dev stopped")


def _wait_for_server(server: DagsterDev) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"dagster dev exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/server_info", timeout=10) as response:
                response.read()
            if server.demo_assets():  # the code location has loaded
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, AssertionError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"dagster dev did not answer within {SERVER_START_TIMEOUT} s:\n{server.log_tail()}")
        time.sleep(2)


RUNS_QUERY = """
{ runsOrError(limit: 100) { ... on Runs { results { runId status assetSelection { path } } } } }
"""
RUN_EVENTS_QUERY = """
query($runId: ID!) { runOrError(runId: $runId) { ... on Run { eventConnection { events {
  __typename ... on MessageEvent { message } ... on ExecutionStepFailureEvent { stepKey error { message } }
} } } } }
"""
BACKFILLS_QUERY = "{ partitionBackfillsOrError(limit: 20) { ... on PartitionBackfills { results { id status } } } }"
TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELED"}


def run_ids(server: DagsterDev) -> set[str]:
    return {run["runId"] for run in server.graphql(RUNS_QUERY)["runsOrError"]["results"]}


def backfill_ids(server: DagsterDev) -> set[str]:
    return {b["id"] for b in server.graphql(BACKFILLS_QUERY)["partitionBackfillsOrError"]["results"]}


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


def wait_for_runs(server: DagsterDev, before: set[str], what: str, timeout: float, settle: Callable[[], bool]) -> None:
    """Wait until the runs started after ``before`` have finished and ``settle()`` holds; all must succeed."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for r in server.graphql(RUNS_QUERY)["runsOrError"]["results"] if r["runId"] not in before]
        finished = bool(runs) and all(r["status"] in TERMINAL_RUN for r in runs)
        if finished and any(r["status"] != "SUCCESS" for r in runs):
            pytest.fail(f"{what}: a run failed\n{failure_report(server, runs)}")
        if finished and settle():
            _log(f"{what}: {len(runs)} run(s) succeeded")
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not done after {timeout} s: {runs}\n{failure_report(server, runs)}")
        time.sleep(3)


NODE_QUERY = """
query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  dataVersion staleStatus staleCauses { key { path } reason }
} } }
"""
PARTITION_QUERY = """
query($key: AssetKeyInput!, $partitions: [String!]) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  dataVersionByPartition(partitions: $partitions)
  staleStatusByPartition(partitions: $partitions)
  staleCausesByPartition(partitions: $partitions) { key { path } reason }
} } }
"""


def asset_node(server: DagsterDev, asset: str, partition: str | None) -> dict[str, Any]:
    if partition is None:
        return server.graphql(NODE_QUERY, {"key": {"path": [asset]}})["assetNodeOrError"]
    node = server.graphql(PARTITION_QUERY, {"key": {"path": [asset]}, "partitions": [partition]})["assetNodeOrError"]
    return {
        "dataVersion": node["dataVersionByPartition"][0],
        "staleStatus": node["staleStatusByPartition"][0],
        "staleCauses": node["staleCausesByPartition"][0],
    }


def data_version(server: DagsterDev, asset: str, partition: str | None = None) -> str | None:
    return asset_node(server, asset, partition)["dataVersion"]


def stale_status(server: DagsterDev, asset: str, partition: str | None = None) -> tuple[str, list[str]]:
    """Dagster's stale status of an asset (partition) and its causes, as the UI shows them."""
    node = asset_node(server, asset, partition)
    return node["staleStatus"], [f"{'/'.join(c['key']['path'])} {c['reason']}" for c in node["staleCauses"]]


def materialization_counts(server: DagsterDev) -> dict[str, tuple[int, int]]:
    """Per demo asset: (materialized partitions, partitions); (1, 1) or (0, 1) when unpartitioned."""
    query = """{ assetNodes { assetKey { path } isMaterializable isPartitioned
        partitionStats { numMaterialized numPartitions } assetMaterializations(limit: 1) { timestamp } } }"""
    counts = {}
    demo = set(server.demo_assets())
    for node in server.graphql(query)["assetNodes"]:
        name = "/".join(node["assetKey"]["path"])
        if name not in demo:
            continue
        if node["isPartitioned"]:
            stats = node["partitionStats"]
            counts[name] = (stats["numMaterialized"], stats["numPartitions"])
        else:
            counts[name] = (len(node["assetMaterializations"]), 1)
    return counts


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


def screenshot(page: Any, name: str, shots: list[Path]) -> None:
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    shots.append(path)
    _log(f"screenshot {path}")


def open_lineage(page: Any, server: DagsterDev) -> Any:
    """The global asset lineage, unfiltered; returns its "Materialize all (N)" button, N the demo assets."""
    page.goto(f"{server.url}/asset-groups")
    button = page.get_by_role("button", name=re.compile(rf"Materialize all \({len(server.demo_assets())}\)"))
    button.wait_for()
    return button


def observe_all_from_ui(page: Any, server: DagsterDev) -> None:
    from playwright.sync_api import expect

    materialize_all = open_lineage(page, server)
    materialize_all.locator("xpath=following::button[1]").click()  # the arrow next to "Materialize all"
    page.get_by_role("menuitem", name=re.compile(r"Observe all \(2\)")).click()
    expect(page.get_by_text(re.compile(r"Launched run"))).to_be_visible()


def materialize_all_from_ui(page: Any, server: DagsterDev) -> None:
    """'Materialize all' on the global lineage: one backfill of every asset over all partitions."""
    from playwright.sync_api import expect

    open_lineage(page, server).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"Launch runs to materialize {len(server.demo_assets())} assets")
    expect(dialog).to_contain_text("All partitions")
    dialog.get_by_role("button", name="Launch backfill").click()
    expect(page.get_by_text(re.compile(r"Created backfill"))).to_be_visible()


def screenshot_asset_graph(browser: Any, server: DagsterDev, name: str, shots: list[Path], unsynced: int = 0) -> None:
    """The whole lineage with the groups expanded, in a viewport tall enough for it to fit; ``unsynced`` of its
    nodes show the "Unsynced" tag."""
    from playwright.sync_api import expect

    # Tall enough for the expanded layout; the nodes are waited for as rendered, not as inside the viewport,
    # because Dagster's layout (and so what falls below the fold) moves with every edge of the graph.
    page = open_page(browser, 1800, 3600)
    try:
        open_lineage(page, server)
        page.get_by_role("button", name="settings", exact=True).click()  # the graph's settings, not the nav's
        page.get_by_role("menuitem", name=re.compile("Expand all groups")).click()
        page.reload()  # the graph fits itself to the viewport when it loads; the URL keeps the filter
        page.get_by_role("button", name=re.compile(rf"Materialize all \({len(server.demo_assets())}\)")).wait_for()
        for asset in ("cluster_profiles", "selection_export", "pruned_checkpoint"):
            page.get_by_text(asset, exact=True).last.wait_for(state="attached")
        page.wait_for_timeout(1500)
        expect(page.get_by_text(re.compile(r"^Unsynced"))).to_have_count(unsynced)
        screenshot(page, name, shots)
    finally:
        page.close()


def check_markdown_image(page: Any, path: str, key: str, name: str | None, shots: list[Path]) -> None:
    """The markdown metadata ``key`` on the asset page ``path`` opens and its picture renders (a PNG data URI)."""
    from playwright.sync_api import expect

    page.goto(f"{page_base(page)}{path}")
    row = page.get_by_role("row").filter(has=page.get_by_text(key, exact=True)).first
    row.get_by_text("Show Markdown").click()
    dialog = page.get_by_role("dialog").filter(has_text=key)
    image = dialog.locator('img[src^="data:image/png;base64,"]').first  # the chart, not the dialog's icon
    expect(image).to_be_visible()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0 && img.naturalHeight > 0", arg=image.element_handle()
    )
    size = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    _log(f"{path} {key} renders: {size[0]}x{size[1]} px")
    assert size[0] > 100 and size[1] > 100, (key, size)
    if name is not None:
        # The dialog fades in: wait until it and its ancestors are opaque before the screenshot.
        page.wait_for_function(
            """img => { for (let e = img; e; e = e.parentElement) {
                           if (getComputedStyle(e).opacity !== "1") return false; }
                       return true; }""",
            arg=image.element_handle(),
        )
        screenshot(page, name, shots)
    dialog.get_by_role("button", name="Close").click()


def page_base(page: Any) -> str:
    """The webserver's address, from the page's current URL."""
    match = re.match(r"^(https?://[^/]+)", page.url)
    assert match, page.url
    return match.group(1)


def observe_pruned_checkpoint_from_ui(page: Any, server: DagsterDev) -> None:
    from playwright.sync_api import expect

    page.goto(f"{server.url}/assets/pruned_checkpoint")
    page.get_by_text("Latest observation").wait_for()
    page.get_by_role("button", name=re.compile(r"\bObserve$")).click()
    expect(page.get_by_text(re.compile(r"Launched run"))).to_be_visible()


def check_unsynced_in_ui(page: Any, server: DagsterDev, asset: str, partition: str, name: str, shots: list[Path]):
    """The asset's partition page shows the 'Unsynced' tag, caused by the new checkpoint version."""
    from playwright.sync_api import expect

    page.goto(f"{server.url}/assets/{asset}?view=partitions&partition={partition}")
    tag = page.get_by_text(re.compile(r"^Unsynced \(\d+\)$"))
    expect(tag).to_be_visible()
    tag.hover()
    expect(page.get_by_text("has a new data version")).to_be_visible()
    expect(page.get_by_text("1 upstream data version change")).to_be_visible()
    screenshot(page, name, shots)


def check_fresh_in_ui(page: Any, server: DagsterDev, shots: list[Path]) -> None:
    """The clusters page, fully loaded, shows no 'Unsynced' tag."""
    from playwright.sync_api import expect

    page.goto(f"{server.url}/assets/clusters")
    expect(page.get_by_text("Latest materialization")).to_be_visible()
    expect(page.get_by_text("cluster_map", exact=True)).to_be_visible()  # metadata loaded with the node
    page.wait_for_timeout(2000)
    expect(page.get_by_text(re.compile(r"^Unsynced"))).to_have_count(0)
    screenshot(page, "07-clusters-not-stale.png", shots)


def check_not_unsynced_in_catalog_or_lineage(browser: Any, server: DagsterDev, shots: list[Path]) -> None:
    """What Dagster 1.13 shows for stale partitions outside their partition pages: nothing.

    A partitioned asset's asset-level stale status is always FRESH (`CachingStaleStatusResolver._get_status`),
    and the catalog, the lineage and "Materialize unsynced" read that status (plus missing partitions). The
    README documents the ways that work; when a Dagster upgrade changes this, this check fails.
    """
    from playwright.sync_api import expect

    for asset, _ in MODEL_DEPENDENT:
        assert stale_status(server, asset) == ("FRESH", []), (asset, stale_status(server, asset))
    page = open_page(browser, 1600, 1400)
    try:
        page.goto(f"{server.url}/assets")
        expect(page.get_by_text(re.compile(r"^Materialized$")).first).to_be_visible()
        page.wait_for_timeout(1500)
        expect(page.get_by_text(re.compile(r"^Unsynced"))).to_have_count(0)
        screenshot(page, "08-catalog-after-reprune.png", shots)
        screenshot_asset_graph(browser, server, "09-lineage-after-reprune.png", shots, unsynced=0)
        materialize_all = open_lineage(page, server)
        materialize_all.locator("xpath=following::button[1]").click()  # the arrow next to "Materialize all"
        page.get_by_role("menuitem", name="Materialize unsynced").click()
        dialog = page.get_by_role("dialog").filter(has_text="Materialize unsynced assets")
        expect(dialog).to_contain_text("All assets are up to date")
        screenshot(page, "10-materialize-unsynced-sees-no-partition.png", shots)
        dialog.get_by_role("button", name="Dismiss").click()
    finally:
        page.close()


def backfill_done(server: DagsterDev, backfills_before: set[str]) -> bool:
    """Whether the one backfill launched since ``backfills_before`` completed; a failed one fails the test."""
    results = server.graphql(BACKFILLS_QUERY)["partitionBackfillsOrError"]["results"]
    new = [b for b in results if b["id"] not in backfills_before]
    assert len(new) == 1, f"expected one new backfill, got {new}"
    status = new[0]["status"]
    if status in ("FAILED", "CANCELED", "COMPLETED_FAILED"):
        pytest.fail(f"backfill {new[0]['id']} ended {status}\n{server.log_tail()}")
    return status in ("COMPLETED", "COMPLETED_SUCCESS")


def materialize_checkpoint_children_from_ui(page: Any, server: DagsterDev, shots: list[Path]) -> None:
    """The documented way to recompute what a re-prune made unsynced: the lineage filtered to
    `pruned_checkpoint+`, "Materialize all", the variant's partition, one backfill."""
    from playwright.sync_api import expect

    page.goto(f"{server.url}/asset-groups")
    page.get_by_role("button", name=re.compile(r"Materialize all \(\d+\)")).wait_for()
    page.locator(".CodeMirror").first.click()  # the "Search and filter assets" box (a CodeMirror editor)
    page.keyboard.type("key:pruned_checkpoint+")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/asset-groups~"))  # the selection is applied (and kept in the URL)
    button = page.get_by_role("button", name=re.compile(rf"Materialize all \({len(MODEL_DEPENDENT)}\)"))
    button.wait_for()
    page.get_by_text("selection", exact=True).last.wait_for()  # the groups, collapsed
    page.wait_for_timeout(1500)
    screenshot(page, "11-lineage-pruned-checkpoint-children.png", shots)
    button.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"Launch runs to materialize {len(MODEL_DEPENDENT)} assets")
    # Dagster anchors the backfill on pruned_model: pick the re-pruned variant, it adds what is downstream.
    expect(dialog).to_contain_text("Dagster will materialize all partitions downstream of the selected partitions")
    dialog.get_by_role("button", name="All", exact=True).click()  # every variant's: here the one, `external`
    launch = dialog.get_by_role("button", name="Launch backfill")
    expect(launch).to_be_enabled()
    page.wait_for_timeout(500)
    screenshot(page, "12-materialize-the-variant.png", shots)
    launch.click()
    expect(page.get_by_text(re.compile(r"Created backfill"))).to_be_visible()


MATERIALIZATIONS_QUERY = """
{ assetNodes { assetKey { path } assetMaterializations(limit: 50) { partition timestamp runId } } }
"""


def materialized_since(server: DagsterDev, since: float) -> set[tuple[str, str | None]]:
    """(asset, partition) of every materialization after ``since`` (a Unix time), read from Dagster."""
    found = set()
    for node in server.graphql(MATERIALIZATIONS_QUERY)["assetNodes"]:
        for event in node["assetMaterializations"]:
            if int(event["timestamp"]) / 1000 > since:
                found.add(("/".join(node["assetKey"]["path"]), event["partition"]))
    return found


REPORT_QUERY = """
query($key: AssetKeyInput!, $partitions: [String!]) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  assetMaterializations(partitions: $partitions, limit: 1) {
    metadataEntries { label ... on PathMetadataEntry { path } }
  }
} } }
"""


def check_report(browser: Any, server: DagsterDev, shots: list[Path]) -> None:
    """report.html, linked from selection_export's metadata as report_path, opens and its pictures render."""
    node = server.graphql(REPORT_QUERY, {"key": {"path": ["selection_export"]}, "partitions": [VARIANT]})[
        "assetNodeOrError"
    ]
    entries = {e["label"]: e.get("path") for e in node["assetMaterializations"][0]["metadataEntries"]}
    report = Path(entries["report_path"])
    assert report.name == "report.html" and report.parent.name == VARIANT and report.is_file(), entries
    page = open_page(browser, 1400, 1000)
    try:
        page.goto(report.as_uri())
        images = page.locator("img")
        count = images.count()
        assert count >= 4, f"{report}: {count} pictures"
        page.wait_for_function(
            "() => [...document.images].every(img => img.complete && img.naturalWidth > 100 && img.naturalHeight > 50)"
        )
        sources = images.evaluate_all("imgs => imgs.map(img => img.src.slice(0, 22))")
        assert all(src.startswith("data:image/") for src in sources), sources  # self-contained: nothing fetched
        _log(f"report renders {count} pictures: {report}")
        page.screenshot(path=str(ARTIFACTS / "13-report.png"), full_page=True)
        shots.append(ARTIFACTS / "13-report.png")
    finally:
        page.close()


# ----------------------------------------------------------------------------------------------------


def test_ui_materialize_cluster_map_and_stale_after_reprune(
    browser: Any, dagster_dev: DagsterDev, record_property: Callable[[str, object], None]
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    server, shots = dagster_dev, []
    started = time.monotonic()
    page = open_page(browser)
    try:
        # 1. Observe the checkpoints, then materialize everything, from the UI.
        before = run_ids(server)
        observe_all_from_ui(page, server)
        wait_for_runs(
            server,
            before,
            "observe sources",
            OBSERVE_TIMEOUT,
            lambda: (
                data_version(server, "pruned_checkpoint", VARIANT) is not None
                and data_version(server, "original_model") is not None
            ),
        )
        first_version = data_version(server, "pruned_checkpoint", VARIANT)

        before, backfills_before = run_ids(server), backfill_ids(server)
        materialize_all_from_ui(page, server)

        wait_for_runs(
            server,
            before,
            "materialize all (backfill)",
            BACKFILL_TIMEOUT,
            lambda: backfill_done(server, backfills_before),
        )
        counts = materialization_counts(server)
        missing = {name: count for name, count in counts.items() if count[0] != count[1] or count[1] == 0}
        assert counts and not missing, f"not materialized: {missing}"
        for asset, partition in MODEL_DEPENDENT:
            assert stale_status(server, asset, partition)[0] == "FRESH", (asset, stale_status(server, asset, partition))
        _log(f"everything materialized after {time.monotonic() - started:.0f} s")
        # The default view: the groups collapsed, reading left to right (pool, semantic, models, scores, ...).
        open_lineage(page, server)
        page.get_by_text("recovery", exact=True).last.wait_for()
        page.wait_for_timeout(1500)
        screenshot(page, "00-lineage-default-view.png", shots)
        screenshot_asset_graph(browser, server, "01-asset-graph-materialized.png", shots)
        catalog = open_page(browser, 1600, 1800)
        try:
            catalog.goto(f"{server.url}/assets")
            expect(catalog.get_by_text(re.compile(r"^Materialized$")).first).to_be_visible()
            screenshot(catalog, "02-catalog-materialized.png", shots)
        finally:
            catalog.close()

        # 2. The pictures in the metadata render: the cluster map and eigengap of `clusters`, the CDS chart.
        check_markdown_image(page, "/assets/clusters", "cluster_map", "03-clusters-cluster-map.png", shots)
        check_markdown_image(page, "/assets/clusters", "eigengap", None, shots)
        partition_page = f"/assets/capability_degradation?view=partitions&partition={VARIANT}"
        check_markdown_image(page, partition_page, "cds_per_cluster", "03b-cds-per-cluster.png", shots)

        # 3. Re-prune in place, observe the checkpoint from the UI: the score assets go stale, clusters do not.
        shutil.rmtree(server.pruned_dir)
        save_tiny_checkpoint(server.pruned_dir, seed=2)
        before = run_ids(server)
        observe_pruned_checkpoint_from_ui(page, server)
        wait_for_runs(
            server,
            before,
            "observe pruned_checkpoint",
            OBSERVE_TIMEOUT,
            lambda: data_version(server, "pruned_checkpoint", VARIANT) not in (None, first_version),
        )
        observed = time.time()
        for asset, partition in MODEL_DEPENDENT:
            status, causes = stale_status(server, asset, partition)
            assert status == "STALE", (asset, partition, status, causes)
            assert "pruned_checkpoint has a new data version" in causes, (asset, causes)
        for asset in SHARED_ASSETS:
            assert stale_status(server, asset) == ("FRESH", []), (asset, stale_status(server, asset))
        for number, (asset, partition) in enumerate(SCORE_ASSETS, start=4):
            check_unsynced_in_ui(page, server, asset, partition, f"0{number}-stale-{asset}.png", shots)
        check_fresh_in_ui(page, server, shots)
        check_not_unsynced_in_catalog_or_lineage(browser, server, shots)

        # 4. The lineage filtered to what reads the checkpoint (`pruned_checkpoint+`: every per-variant asset is its
        # direct child) and "Materialize all" over the variant: one backfill recomputes exactly the unsynced
        # partitions, in dependency order, and nothing of the semantic branch.
        before, backfills_before = run_ids(server), backfill_ids(server)
        materialize_checkpoint_children_from_ui(page, server, shots)
        expected = set(MODEL_DEPENDENT)
        wait_for_runs(
            server,
            before,
            "materialize pruned_checkpoint+ (backfill)",
            BACKFILL_TIMEOUT,
            lambda: backfill_done(server, backfills_before) and expected <= materialized_since(server, observed),
        )
        recomputed = materialized_since(server, observed)
        _log(f"recomputed after the re-prune: {sorted(recomputed)}")
        assert recomputed == expected, recomputed  # nothing of the semantic branch
        for asset, partition in MODEL_DEPENDENT:
            assert stale_status(server, asset, partition)[0] == "FRESH", (asset, stale_status(server, asset, partition))

        # 5. The report of the new selection opens offline, its pictures inlined.
        check_report(browser, server, shots)
    except BaseException:  # pytest.fail raises a BaseException
        if not page.is_closed():
            page.screenshot(path=str(ARTIFACTS / "failure.png"))
            _log(f"screenshot at failure: {ARTIFACTS / 'failure.png'}")
        raise
    finally:
        page.close()
        record_property("screenshots", [str(path) for path in shots])
        print("\nscreenshots:\n" + "\n".join(f"  {path}" for path in shots), flush=True)
    _log(f"UI test done in {time.monotonic() - started:.0f} s")
