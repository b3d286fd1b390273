"""DuckDB contention, with real processes: another process holds the database file (read-write or read-only)
while a run wants to write. The run waits PASER_DB_LOCK_TIMEOUT seconds, then fails with a message that names
the holder and says what to do; once the holder lets go, a rerun succeeds.

DuckDB allows one read-write process per file, or any number of read-only ones; a writer cannot open the file
while any other process has it open, read-only included. These tests pin that down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
from paser_cli import PASER, run_paser

from paser_assets import storage

pytestmark = pytest.mark.system

HOLDER_TAG = "paser_test_lock_holder.py"  # the holder's script: on its command line, which the error must show
HOLDER = """
import sys, time, duckdb
path, mode, hold_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
if mode == "ro":
    duckdb.connect(path).close()  # a read-only connection needs an existing file
if mode == "wait":  # get the lock as soon as a run lets go of it, the way a user's retrying script would
    from paser_assets.storage import connect
    conn = connect(path, lock_timeout_s=300)
else:
    conn = duckdb.connect(path, read_only=mode == "ro")
conn.execute("SELECT 42").fetchall()
print("ready", flush=True)
time.sleep(hold_s)
conn.close()
print("released", flush=True)
"""


def _default_sigterm() -> None:  # pragma: no cover - runs in the child before exec
    # A test runner started from a background shell may ignore SIGTERM, and children inherit that.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Holder:
    """A process that opens the DuckDB file, prints 'ready', holds it for ``hold_s`` seconds, then closes it."""

    def __init__(self, db: Path, mode: str, hold_s: float = 300) -> None:
        script = db.parent / HOLDER_TAG
        script.write_text(HOLDER)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(db), mode, str(hold_s)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_default_sigterm,
        )

    def wait_ready(self, timeout: float = 120) -> float:
        """Wait for 'ready'; returns the moment it came (time.monotonic())."""
        assert self.proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not result or result[0].strip() != "ready":
            self.release()
            pytest.fail(f"lock holder not ready: {result} {self.proc.stderr.read() if self.proc.stderr else ''}")
        return time.monotonic()

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # SIGTERM ignored (inherited from a background shell): no choice
                self.proc.kill()
        self.proc.wait(timeout=60)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def holders():
    started: list[Holder] = []

    def start(db: Path, mode: str, hold_s: float = 300) -> Holder:
        started.append(Holder(db, mode, hold_s))
        return started[-1]

    yield start
    for holder in started:
        holder.release()


def paser_env(tmp_path: Path, tiny_llama_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASER_") and k != "DAGSTER_HOME"}
    env.update(
        PASER_DB=str(tmp_path / "paser.duckdb"),
        PASER_DB_LOCK_TIMEOUT="3",
        PASER_DEMO_SIZE="48",
        PASER_ORIGINAL_MODEL=str(tiny_llama_dir),
        PASER_PRUNE_METHOD="magnitude",
        PASER_MODEL_CACHE=str(tmp_path / "models"),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra)
    return env


def materialize(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    result = run_paser(["materialize"], env, Path(env["PASER_DB"]).parent)
    return result, time.monotonic() - start


def assert_names_holder_and_remedy(message: str, holder: Holder) -> None:
    assert f"PID {holder.proc.pid} (" in message, message
    assert HOLDER_TAG in message, message  # the holder's command line
    assert "PASER_DB_LOCK_TIMEOUT" in message and "Close that connection" in message, message
    assert "IOException" not in message and "Could not set lock" not in message, message


def test_connect_waits_for_a_holder_that_lets_go(tmp_path: Path, holders) -> None:
    db = tmp_path / "paser.duckdb"
    holder = holders(db, "rw", hold_s=1.5)
    ready = holder.wait_ready()
    conn = storage.connect(str(db), lock_timeout_s=10)
    waited = time.monotonic() - ready
    print(f"connect waited {waited:.2f} s for a holder that let go after 1.5 s")
    try:
        assert conn.execute("SELECT 42").fetchall() == [(42,)]
    finally:
        conn.close()
    assert holder.proc.wait(timeout=30) == 0
    assert 1.0 <= waited < 6.0, f"connect took {waited:.1f} s for a lock released after 1.5 s"


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_connect_gives_up_after_the_timeout_and_names_the_holder(tmp_path: Path, holders, mode: str) -> None:
    db = tmp_path / "paser.duckdb"
    holder = holders(db, mode)
    holder.wait_ready()
    start = time.monotonic()
    with pytest.raises(storage.DatabaseLockedError) as error:
        storage.connect(str(db), lock_timeout_s=1.0)
    waited = time.monotonic() - start
    assert 1.0 <= waited < 4.0
    assert_names_holder_and_remedy(str(error.value), holder)
    if mode == "ro":  # readers share the file: another read-only connection opens at once
        with storage.connect(str(db), read_only=True, lock_timeout_s=0) as conn:
            assert conn.execute("SELECT 42").fetchall() == [(42,)]
    else:  # a read-write holder excludes readers too
        with pytest.raises(storage.DatabaseLockedError):
            storage.connect(str(db), read_only=True, lock_timeout_s=0)


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_run_fails_fast_while_the_file_is_held_then_succeeds(
    tmp_path: Path, tiny_llama_dir: Path, holders, mode: str
) -> None:
    env = paser_env(tmp_path, tiny_llama_dir)
    holder = holders(Path(env["PASER_DB"]), mode)
    holder.wait_ready()
    result, elapsed = materialize(env)
    print(f"{mode} holder: run exited {result.returncode} after {elapsed:.1f} s")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert elapsed < 60, f"a run blocked by a lock took {elapsed:.0f} s to fail"  # DuckDB alone: a silent 100 s
    assert "waited 3 s" in result.stderr
    assert_names_holder_and_remedy(result.stderr, holder)
    assert "Traceback" not in result.stderr

    holder.release()
    result, _ = materialize(env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "materialized 13 assets" in result.stdout
    with duckdb.connect(env["PASER_DB"], read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM paser.paser.selected_instructions").fetchone()[0] > 0


def test_holder_that_arrives_mid_run_fails_the_step_with_a_clear_message(
    tmp_path: Path, tiny_llama_dir: Path, holders
) -> None:
    env = paser_env(tmp_path, tiny_llama_dir)
    run = subprocess.Popen(
        [*PASER, "materialize"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stderr is not None
        lines: list[str] = []
        for line in run.stderr:  # the run's first log line: the pool is read, more steps follow
            lines.append(line)
            if " - recovery_pool - read 48 rows" in line:
                break
        else:
            pytest.fail("the run ended before reading the pool:\n" + "".join(lines[-30:]))
        holder = holders(Path(env["PASER_DB"]), "wait")  # takes the file as soon as the run closes it
        ready = holder.wait_ready()
        stdout, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    failed = time.monotonic() - ready
    print(f"holder took the file mid-run; the run exited {run.returncode} {failed:.1f} s later")
    # a lock held by another process is the user's to fix: exit 2, as before the run (see GraphRun.exit_code)
    assert run.returncode == 2, stdout[-2000:] + stderr[-3000:]
    assert failed < 60, f"the run failed {failed:.0f} s after the lock was taken"
    failures = [line for line in stderr.splitlines() if line.startswith("FAILED ")]
    assert failures, stderr[-3000:]
    assert_names_holder_and_remedy(failures[0], holder)
    assert "waited 3 s" in failures[0]


def test_readme_snapshot_recipe_lets_runs_write_while_the_copy_stays_open(
    tmp_path: Path, holders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'Querying while runs go on': the copy is consistent, and a session holding it does not block writers."""
    db = tmp_path / "paser.duckdb"
    with duckdb.connect(str(db)) as conn:
        conn.execute("CREATE SCHEMA paser.paser")
        conn.execute("CREATE TABLE paser.paser.selection AS SELECT range AS rank FROM range(100)")
        conn.execute(
            "USE paser.paser; CREATE VIEW selected AS SELECT * FROM selection WHERE rank < 10"
        )  # as the package
    monkeypatch.chdir(tmp_path)  # the README's paths are relative to the working directory
    with duckdb.connect() as con:  # the README's recipe, verbatim
        con.sql(
            "ATTACH 'paser.duckdb' AS src (READ_ONLY); ATTACH 'snapshot.duckdb' AS snap; COPY FROM DATABASE src TO snap"
        )
    holder = holders(tmp_path / "snapshot.duckdb", "ro")  # a long session on the copy
    holder.wait_ready()
    with storage.connect(str(db), lock_timeout_s=0) as writer:  # a run can write the original at once
        writer.execute("DELETE FROM paser.paser.selection WHERE rank >= 50")
    with duckdb.connect(str(tmp_path / "snapshot.duckdb"), read_only=True) as snap:
        assert snap.execute("SELECT count(*) FROM snapshot.paser.selection").fetchone()[0] == 100
        assert snap.execute("SELECT count(*) FROM snapshot.paser.selected").fetchone()[0] == 10
