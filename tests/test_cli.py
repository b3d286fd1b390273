"""The `paser` command as a user runs it: a subprocess configured by PASER_* variables."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import duckdb
import paser_cli
import pytest

pytestmark = pytest.mark.system

FAULT_INJECTION = Path(__file__).with_name("fault_injection.py")


RELOAD_HINT = "click Reload definitions (Deployment > Code locations)"
# What Python prints for a warning: "path:line: SomeWarning: text", then the source line, indented.
PYTHON_WARNING = re.compile(r"^\S+:\d+: \w*Warning: ")


def run_paser(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return paser_cli.run_paser(args, {**os.environ, **env}, cwd)


def closed_port_url() -> str:
    """The URL of a local port nothing listens on (so that no test reloads a webserver someone is running)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def messages(stderr: str) -> list[str]:
    """The lines of stderr that are not Python warnings (a warning's line and the source line after it)."""
    lines, kept = stderr.strip().splitlines(), []
    for number, line in enumerate(lines):
        after_warning = number > 0 and PYTHON_WARNING.match(lines[number - 1]) and line.startswith(" ")
        if not (PYTHON_WARNING.match(line) or after_warning):
            kept.append(line)
    return kept


def test_demo_materializes_and_prints_sql_summary(tmp_path: Path, tiny_llama_dir: Path) -> None:
    env = {
        "PASER_DB": str(tmp_path / "demo.duckdb"),
        "PASER_DEMO_SIZE": "64",
        "PASER_ORIGINAL_MODEL": str(tiny_llama_dir),
        "PASER_PRUNE_METHOD": "magnitude",
        "PASER_MODEL_CACHE": str(tmp_path / "models"),
        "DAGSTER_HOME": "",
    }
    result = run_paser(["demo"], env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "materialized 13 assets" in result.stdout
    assert "magnitude-50/selection" in result.stdout
    # a random tiny model is a near-uniform guesser: the signal check says so, and the run still succeeds
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING ")]
    assert len(warnings) == 1, result.stderr[-3000:]
    assert warnings[0].startswith("WARNING degradation_signal on magnitude-50/capability_degradation: ")
    assert "predicts about as well as chance" in warnings[0]
    assert "Clusters" in result.stdout and "SQL: SELECT cluster, size" in result.stdout
    with duckdb.connect(env["PASER_DB"], read_only=True) as conn:
        sizes = conn.execute("SELECT cluster, size FROM demo.paser.cluster_profiles ORDER BY cluster").fetchall()
    assert sizes and sum(size for _, size in sizes) > 50

    summary = run_paser(["summary"], env, tmp_path)
    assert summary.returncode == 0 and "Capability degradation" in summary.stdout


def test_bad_setting_exits_with_a_clear_message(tmp_path: Path) -> None:
    result = run_paser(
        ["demo"], {"PASER_DB": str(tmp_path / "x.duckdb"), "PASER_CLUSTERS": "lots", "DAGSTER_HOME": ""}, tmp_path
    )
    assert result.returncode == 2
    assert "PASER_CLUSTERS='lots'" in result.stderr
    assert "Traceback" not in result.stderr


def test_reprune_with_the_documented_refresh_command(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from tiny_models import save_tiny_checkpoint

    external = save_tiny_checkpoint(tmp_path / "pruned", seed=1)
    env = {  # no DAGSTER_HOME: the CLI keeps its history in .dagster_home beside the database
        "PASER_DB": str(tmp_path / "data" / "paser.duckdb"),
        "PASER_DEMO_SIZE": "48",
        "PASER_ORIGINAL_MODEL": str(tiny_llama_dir),
        "PASER_PRUNED_MODEL": str(external),
        "PASER_MODEL_CACHE": str(tmp_path / "models"),
        "PASER_WEBSERVER": closed_port_url(),  # `variants add/remove` find no UI to reload
        "DAGSTER_HOME": "",
    }
    first = run_paser(["materialize"], env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    home = tmp_path / "data" / ".dagster_home"
    assert first.stdout.splitlines()[0] == (
        f"paser: Dagster instance {home} (beside the database); database {env['PASER_DB']} (schema paser)"
    )
    assert "materialized 13 assets" in first.stdout

    unchanged = run_paser(["refresh"], env, tmp_path)
    assert unchanged.returncode == 0, unchanged.stderr[-3000:]
    assert "stale or missing after observing: nothing" in unchanged.stdout
    assert "materialized 0 assets" in unchanged.stdout

    def observed_versions(stdout: str) -> dict[str, str]:
        lines = [line.removeprefix("observed ") for line in stdout.splitlines() if line.startswith("observed ")]
        return dict(line.split(": ", 1) for line in lines)

    before = run_paser(["observe"], env, tmp_path)
    assert before.returncode == 0, before.stderr[-3000:]
    shutil.rmtree(external)
    save_tiny_checkpoint(external, seed=2)  # re-pruned in place
    # `paser observe` records the new checkpoint in the instance and materializes nothing (what the UI's Observe does)
    after = run_paser(["observe"], env, tmp_path)
    assert after.returncode == 0, after.stderr[-3000:]
    old, new = observed_versions(before.stdout), observed_versions(after.stdout)
    assert set(old) == set(new) == {"original_model", "external/pruned_checkpoint"}
    assert old["original_model"] == new["original_model"]
    assert old["external/pruned_checkpoint"] != new["external/pruned_checkpoint"]
    assert "nothing was materialized" in after.stdout and "materialized 1" not in after.stdout
    expected = [
        "external/capability_degradation",
        "external/concept_graph",
        "external/degradation_scores",
        "external/pruned_model",
        "external/selection",
        "external/selection_export",
    ]
    dry = run_paser(["refresh", "--dry-run"], env, tmp_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    listed = [line.strip() for line in dry.stdout.splitlines() if line.startswith("  ")]
    assert [line.split(": ", 1)[0] for line in listed] == expected
    assert "external/pruned_checkpoint" in listed[expected.index("external/pruned_model")]  # the reason
    result = run_paser(["refresh"], env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "materialized 6 assets" in result.stdout and ", ".join(expected) in result.stdout

    added = run_paser(["variants", "add", "nm24", "magnitude:2:4"], env, tmp_path)
    assert added.returncode == 0, added.stderr[-3000:]
    assert "materialized 6 assets" in added.stdout and "nm24/selection" in added.stdout
    assert RELOAD_HINT in added.stdout  # no UI answered: the one click to do there
    listing = run_paser(["variants", "list"], env, tmp_path)
    assert "external\tcheckpoint" in listing.stdout and "nm24\trecipe\tmagnitude:2:4" in listing.stdout

    removed = run_paser(["variants", "remove", "nm24"], env, tmp_path)
    assert removed.returncode == 0 and "removed variant nm24" in removed.stdout
    assert RELOAD_HINT in removed.stdout
    with duckdb.connect(env["PASER_DB"], read_only=True) as conn:
        variants = conn.execute("SELECT DISTINCT variant FROM paser.paser.selection").fetchall()
    assert variants == [("external",)]
    assert home.is_dir() and not (tmp_path / ".dagster_home").exists()
    # every run the commands launched is tagged with the database and the command that launched it
    instance = dg.DagsterInstance.from_config(str(home))
    assert not [key for key in instance.get_asset_keys() if key.path[0] == "nm24"]  # its history is wiped too
    runs = instance.get_runs()
    assert {run.tags["paser/db"] for run in runs} == {str(Path(env["PASER_DB"]).resolve())}
    assert {run.tags["paser/command"] for run in runs} == {
        "materialize",
        "observe",
        "refresh",
        "refresh --dry-run",
        "variants add",
    }


def test_bad_variant_name_is_refused(tmp_path: Path) -> None:
    result = run_paser(
        ["variants", "add", "x'; DROP TABLE paser.selection; --", "wanda:0.5"],
        {"PASER_DB": str(tmp_path / "x.duckdb"), "DAGSTER_HOME": ""},
        tmp_path,
    )
    assert result.returncode == 2 and "invalid variant name" in result.stderr


def test_a_variant_whose_checkpoint_does_not_exist_is_refused_and_not_registered(tmp_path: Path) -> None:
    env = {"PASER_DB": str(tmp_path / "x.duckdb"), "PASER_WEBSERVER": closed_port_url(), "DAGSTER_HOME": ""}
    missing = tmp_path / "no" / "such" / "ckpt"
    result = run_paser(["variants", "add", "v1", str(missing), "--no-materialize"], env, tmp_path)
    assert result.returncode == 2, result.stdout
    assert messages(result.stderr) == [
        f"paser: variant 'v1' not registered: '{missing}': no such folder or file, and not a hub id of the form "
        "owner/name"
    ]  # one line, no traceback
    assert "registered variant" not in result.stdout and "webserver" not in result.stdout  # nothing to tell the UI
    listing = run_paser(["variants", "list"], env, tmp_path)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert "v1\t" not in listing.stdout
    with duckdb.connect(env["PASER_DB"], read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM x.paser.variants WHERE variant = 'v1'").fetchone() == (0,)


def test_adding_a_variant_without_a_running_ui_says_the_one_click_to_do_there(tmp_path: Path) -> None:
    env = {"PASER_DB": str(tmp_path / "x.duckdb"), "PASER_WEBSERVER": closed_port_url(), "DAGSTER_HOME": ""}
    result = run_paser(["variants", "add", "v1", "magnitude:0.3", "--no-materialize"], env, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "registered variant v1 (recipe: magnitude:0.3)" in lines
    assert f"paser: no Dagster webserver answered at {env['PASER_WEBSERVER']} (PASER_WEBSERVER)" in result.stdout
    assert any(line.startswith("paser: in an open Dagster UI") and RELOAD_HINT in line for line in lines)
    assert "v1\trecipe\tmagnitude:0.3" in run_paser(["variants", "list"], env, tmp_path).stdout


class FakeWebserver(ThreadingHTTPServer):
    """A Dagster webserver as far as `paser variants` sees it: answers POST /graphql as reloadWorkspace does."""

    ANSWER = json.dumps(
        {
            "data": {
                "reloadWorkspace": {
                    "__typename": "Workspace",
                    "locationEntries": [{"name": "x", "loadStatus": "LOADED"}],
                }
            }
        }
    ).encode()

    def __init__(self) -> None:
        self.received: list[tuple[str, dict]] = []  # (path, JSON body) of every POST
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.received.append((self.path, json.loads(body)))
                answer = FakeWebserver.ANSWER
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: object) -> None:  # quiet
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def webserver() -> Iterator[FakeWebserver]:
    server = FakeWebserver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_adding_and_removing_a_variant_reloads_a_running_ui(tmp_path: Path, webserver: FakeWebserver) -> None:
    env = {"PASER_DB": str(tmp_path / "x.duckdb"), "PASER_WEBSERVER": webserver.url + "/", "DAGSTER_HOME": ""}
    added = run_paser(["variants", "add", "v1", "magnitude:0.3", "--no-materialize"], env, tmp_path)
    assert added.returncode == 0, added.stderr[-2000:]
    reloaded = f"paser: reloaded the code locations of the Dagster webserver at {webserver.url}/: x"
    assert reloaded in added.stdout.splitlines() and RELOAD_HINT not in added.stdout
    [(path, body)] = webserver.received
    assert path == "/graphql" and "reloadWorkspace" in body["query"] and body["query"].startswith("mutation")

    removed = run_paser(["variants", "remove", "v1"], env, tmp_path)
    assert removed.returncode == 0, removed.stderr[-2000:]
    assert "removed variant v1" in removed.stdout and reloaded in removed.stdout.splitlines()
    assert len(webserver.received) == 2 and webserver.received[1] == webserver.received[0]


def test_the_standard_dagster_cli_selects_any_single_asset(tmp_path: Path) -> None:
    """`dagster asset materialize --select` works for every asset a user may name, the pool included."""
    (tmp_path / "home").mkdir()
    env = {
        **os.environ,
        "PASER_DB": str(tmp_path / "std.duckdb"),
        "PASER_DEMO_SIZE": "60",
        "DAGSTER_HOME": str(tmp_path / "home"),
    }
    dagster = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "paser_assets.definitions", "--select"]
    for selection in ("recovery_pool", "+key:cluster_profiles"):
        result = subprocess.run([*dagster, selection], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "RUN_SUCCESS" in result.stderr
    with duckdb.connect(env["PASER_DB"], read_only=True) as conn:
        rejected = conn.execute("SELECT count(*) FROM std.paser.recovery_pool_rejected").fetchall()[0][0]
        profiles = conn.execute("SELECT count(*) FROM std.paser.cluster_profiles").fetchall()[0][0]
    assert rejected >= 0 and profiles >= 2


def materialized_keys(instance: dg.DagsterInstance) -> dict[str, int]:
    """How many times each asset was materialized in the instance, by its name in the UI."""
    return {
        key.to_user_string(): len(instance.fetch_materializations(key, limit=100).records)
        for key in instance.get_asset_keys()
        if instance.fetch_materializations(key, limit=1).records
    }


ONE_VARIANT = 'key:"mag50/*"'  # every asset of variant mag50, as the UI's lineage and the docs name them


@pytest.mark.parametrize("selection", [ONE_VARIANT, f'{ONE_VARIANT} and not tag:"paser/recovery"'])
def test_the_standard_dagster_cli_materializes_one_variant(
    selection: str, tmp_path: Path, tiny_llama_dir: Path
) -> None:
    """`dagster asset materialize --select 'key:"<variant>/*"'` materializes that variant's assets, in one run,
    once the shared ones exist, and nothing of another variant."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PASER_")},
        "PASER_DB": str(tmp_path / "std.duckdb"),
        "PASER_DEMO_SIZE": "48",
        "PASER_ORIGINAL_MODEL": str(tiny_llama_dir),
        "PASER_VARIANTS": "mag50=magnitude:0.5;nm24=magnitude:2:4",
        "PASER_MODEL_CACHE": str(tmp_path / "models"),
        "PASER_EXPORT_DIR": str(tmp_path / "export"),
        "DAGSTER_HOME": str(home),
    }
    dagster = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "paser_assets.definitions", "--select"]
    shared = subprocess.run([*dagster, "group:pool or group:semantic"], env=env, cwd=tmp_path, capture_output=True,
                            text=True)  # fmt: skip
    assert shared.returncode == 0, shared.stderr[-3000:]
    shared_assets = {
        "recovery_pool", "holdout_split", "instruction_embeddings", "manifold", "clusters", "cluster_profiles",
        "sample_concepts",
    }  # fmt: skip
    assert materialized_keys(dg.DagsterInstance.from_config(str(home))) == dict.fromkeys(shared_assets, 1)

    result = subprocess.run([*dagster, selection], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("RUN_SUCCESS") == 1  # one run
    variant = {"pruned_model", "degradation_scores", "capability_degradation", "selection", "concept_graph",
               "selection_export"}  # fmt: skip
    # the variant's assets, once each; the shared ones not again; nothing of nm24
    assert materialized_keys(dg.DagsterInstance.from_config(str(home))) == {
        **dict.fromkeys(shared_assets, 1),
        **{f"mag50/{name}": 1 for name in variant},
    }
    with duckdb.connect(env["PASER_DB"], read_only=True) as conn:
        selected = conn.execute("SELECT DISTINCT variant FROM std.paser.selection").fetchall()
    assert selected == [("mag50",)]
    assert (tmp_path / "export" / "mag50" / "selection.parquet").is_file()
    assert not (tmp_path / "export" / "nm24").exists()


def test_help_loads_no_heavy_package_and_names_the_settings(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from paser_assets.cli import main\n"
        "try:\n    main(['materialize', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('dagster', 'torch', 'transformers', 'duckdb') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
    for flag, (variable, _) in paser_cli_flags().items():
        assert flag in result.stdout and variable in result.stdout
    assert "paser settings" in result.stdout


def paser_cli_flags() -> dict[str, tuple[str, str]]:
    from paser_assets.cli import FLAGS

    return FLAGS


def test_flags_set_the_settings_they_name() -> None:
    from paser_assets.resources import PaserDuckDB
    from paser_assets.settings import environment_names

    known = {*environment_names().values(), *PaserDuckDB.environment_names().values()}
    assert {variable for variable, _ in paser_cli_flags().values()} <= known


def test_flags_reach_the_run_and_a_missing_database_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "x.duckdb"
    result = run_paser(["summary", "--db", str(missing)], {"DAGSTER_HOME": ""}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"paser: no database at {missing}: run `paser materialize` first, or set PASER_DB"
    assert not missing.parent.exists()  # nothing created by looking
    listed = run_paser(["variants", "list", "--db", str(tmp_path / "v.duckdb")], {"DAGSTER_HOME": ""}, tmp_path)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert listed.stdout.splitlines()[0].endswith(f"database {tmp_path / 'v.duckdb'} (schema paser)")


def test_an_unknown_setting_variable_is_refused(tmp_path: Path) -> None:
    result = run_paser(["demo"], {"PASER_DB": str(tmp_path / "x.duckdb"), "PASER_BUDGETT": "0.1"}, tmp_path)
    assert result.returncode == 2
    assert "PASER_BUDGETT (did you mean PASER_BUDGET?)" in result.stderr and "Traceback" not in result.stderr


def _misuse_cases(tmp: Path) -> list[tuple[list[str], dict[str, str], str]]:
    sqlite = tmp / "other.db"
    sqlite.write_bytes(b"SQLite format 3\x00" + bytes(100))
    (tmp / "afile").write_text("x")
    db = str(tmp / "x.duckdb")
    return [
        (["materialize"], {"PASER_DB": db, "PASER_BUDGET": "inf"}, "PASER_BUDGET='inf'"),
        (["materialize"], {"PASER_DB": db, "PASER_BUDGET": "nan"}, "PASER_BUDGET='nan'"),
        (["materialize"], {"PASER_DB": db, "PASER_SEED": "-1"}, "PASER_SEED='-1'"),
        (["materialize"], {"PASER_DB": db, "PASER_PRUNE_NM": "4:2"}, "PASER_PRUNE_NM='4:2'"),
        (["materialize"], {"PASER_DB": db, "PASER_GRAPH_REGULARIZATION": "-1"}, "PASER_GRAPH_REGULARIZATION"),
        (["materialize"], {"PASER_DB": db, "PASER_DB_LOCK_TIMEOUT": "nan"}, "PASER_DB_LOCK_TIMEOUT='nan'"),
        (["materialize"], {"PASER_DB": str(tmp)}, "is a folder"),
        (["materialize"], {"PASER_DB": str(sqlite)}, "it is an SQLite database"),
        (["materialize"], {"PASER_DB": db, "PASER_EXPORT_DIR": str(tmp / "afile")}, "PASER_EXPORT_DIR="),
        (["materialize"], {"PASER_DB": db, "PASER_BUDGETT": "0.1"}, "did you mean PASER_BUDGET?"),
        (["materialize", "--select", "key:("], {"PASER_DB": db}, "is not a Dagster asset selection"),
        (["materialize", "--select", "key:nothing"], {"PASER_DB": db}, "matches no asset"),
        (["variants", "remove", "nothere"], {"PASER_DB": db}, "'nothere' is not registered"),
        (["summary"], {"PASER_DB": str(tmp / "missing.duckdb")}, "no database at"),
    ]


def test_misuse_is_one_clear_line_and_exit_code_2(tmp_path: Path) -> None:
    for args, env, expected in _misuse_cases(tmp_path):
        result = run_paser(args, {**env, "DAGSTER_HOME": ""}, tmp_path)
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        assert result.returncode == 2, (args, env, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (args, env, result.stderr[-2000:])
        assert message.startswith("paser: ") and expected in message, (args, env, message)


def test_a_full_disk_under_the_database_is_one_line_and_the_next_run_succeeds(tmp_path: Path) -> None:
    env = {**os.environ, "PASER_DB": str(tmp_path / "paser.duckdb"), "PASER_DEMO_SIZE": "24", "DAGSTER_HOME": ""}
    arguments = ["materialize", "--select", "recovery_pool"]
    command = [sys.executable, str(FAULT_INJECTION), "nospace:recovery_pool", *arguments]
    full = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert full.returncode == 2  # a failure the user can fix (see GraphRun.exit_code)
    [failure] = [line for line in full.stderr.splitlines() if line.startswith("FAILED")]
    assert failure.startswith(f"FAILED recovery_pool: no space left on {tmp_path / 'paser.duckdb'} (writing /dev/full)")
    assert "Traceback" not in full.stderr and "Current transaction is aborted" not in full.stderr
    again = run_paser(arguments, env, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "materialized 1 assets" in again.stdout
