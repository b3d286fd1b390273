"""What the Dagster UI reads after a re-prune observed from the command line, through Dagster's GraphQL API.

`dagster dev` runs with two external variants (``ext-a``, ``ext-b``: tiny Llama checkpoints, PASER_VARIANTS);
`paser materialize` (a subprocess on the same instance and database) materializes everything. Then ext-b's
checkpoint is overwritten in place (a re-prune) and `paser observe` records the checkpoints' versions,
materializing nothing. The webserver's ``assetNodes { assetKey { path } staleStatus }`` (the status the
catalog, the lineage and *Materialize unsynced* show) must then be STALE for exactly ext-b's assets that
depend on its checkpoint, with the checkpoint's new data version as the cause, and FRESH for everything else:
ext-a, the shared branch, the observed sources and the recovery comparison (without PASER_RECOVERY not
launchable: absent, or shown as external assets).

No browser: `tests/test_ui.py` checks the same in Chromium, after an observation clicked in the UI. The
helpers that start `dagster dev` and query it are that file's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from paser_cli import run_paser
from test_ui import (
    SHARED_ASSETS,
    SOURCES,
    VARIANTS,
    DagsterDev,
    asset_nodes,
    dagster_dev_running,
    latest_events,
    materialized_since,
    server_env,
    source_versions,
    stale_assets,
    stale_statuses,
    variant_assets,
)
from tiny_models import save_tiny_checkpoint

pytestmark = pytest.mark.system

UNTOUCHED, REPRUNED = VARIANTS  # here the second variant is re-pruned (test_ui.py re-prunes the first)
CLI_TIMEOUT = 900


@pytest.fixture(scope="module")
def server_and_checkpoints(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path
) -> Iterator[tuple[DagsterDev, dict[str, Path]]]:
    tmp = tmp_path_factory.mktemp("ui-graphql")
    checkpoints = {
        variant: save_tiny_checkpoint(tmp / "checkpoints" / variant, seed=seed)
        for seed, variant in enumerate((UNTOUCHED, REPRUNED), 1)
    }
    env = server_env(tmp, tiny_llama_dir, checkpoints)
    try:
        with dagster_dev_running(env, tmp, tmp / "dagster-dev.log") as server:
            yield server, checkpoints
    except AssertionError as error:  # it did not start: fail with Dagster's words
        pytest.fail(str(error))


def paser(server: DagsterDev, *args: str) -> str:
    """Run `paser <args>` on the server's instance and database; its stdout, after checking that it succeeded."""
    done = run_paser(list(args), server.env, server.cwd, timeout=CLI_TIMEOUT)
    assert done.returncode == 0, f"paser {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_paser_observe_after_a_reprune_makes_exactly_that_variants_assets_stale_in_graphql(
    server_and_checkpoints: tuple[DagsterDev, dict[str, Path]],
) -> None:
    server, checkpoints = server_and_checkpoints
    nodes = asset_nodes(server)
    launchable = {key for key, node in nodes.items() if node["isMaterializable"] and node["isExecutable"]}
    assert launchable == {*SHARED_ASSETS, *variant_assets(UNTOUCHED), *variant_assets(REPRUNED)}, sorted(launchable)
    # Without PASER_RECOVERY the recovery comparison is either absent or shown as external (not executable) assets.
    recovery = {key for key, node in nodes.items() if not node["isExecutable"]}
    assert all(key.split("/", 1)[0] in (UNTOUCHED, REPRUNED) for key in recovery), sorted(recovery)

    # Everything materialized by the command line, on the instance the webserver shows.
    started = time.monotonic()
    output = paser(server, "materialize")
    assert f"materialized {len(launchable)} assets" in output, output[-3000:]
    events = latest_events(server)
    assert {key for key in launchable if events[key]["materialization"] is None} == set()
    assert stale_assets(server) == set(), stale_statuses(server)
    versions = source_versions(server)
    assert None not in versions.values(), versions
    print(f"paser materialize: {time.monotonic() - started:.0f} s", flush=True)

    # Re-prune ext-b in place: nothing is stale until the checkpoint is observed.
    save_tiny_checkpoint(checkpoints[REPRUNED], seed=3)
    assert stale_assets(server) == set()

    observed_from = time.time()
    output = paser(server, "observe")
    observed = dict(re.findall(r"^observed (\S+): (\S+)$", output, flags=re.MULTILINE))
    assert set(observed) == set(SOURCES), output
    after = source_versions(server)
    assert after == observed, (after, observed)  # what the webserver reads is what the command recorded
    changed = f"{REPRUNED}/pruned_checkpoint"
    assert {key for key in SOURCES if after[key] != versions[key]} == {changed}, (versions, after)
    assert materialized_since(server, observed_from) == {}, "paser observe materialized something"

    statuses = stale_statuses(server)
    stale = {key: causes for key, (status, causes) in statuses.items() if status != "FRESH"}
    assert set(stale) == variant_assets(REPRUNED), stale
    for key, causes in stale.items():
        assert statuses[key][0] == "STALE", (key, statuses[key])
        assert causes == [f"{changed} has a new data version"], (key, causes)
    # Spelled out: the other variant, the shared branch, the sources and the recovery comparison are FRESH.
    for key in (*variant_assets(UNTOUCHED), *SHARED_ASSETS, *SOURCES, *recovery):
        assert statuses[key] == ("FRESH", []), (key, statuses[key])
    print(f"STALE after `paser observe`: {sorted(stale)}", flush=True)
