"""Peak memory of reading a JSONL pool: bytes per row kept, over the baseline of a process that imported the reader.

Run by hand: ``.venv/bin/python bench/pool_memory.py --rows 1000000 200000``. For each N it writes N short, distinct
Alpaca rows (``{"instruction": "Repeat the number 0000042.", "output": "It is 0000042!!"}``, 75 bytes a line:
72 MiB for a million, the file of ``tests/pool/test_memory.py``) as JSONL in a temporary folder, then reads it
in a fresh child process through the package's pool reader, ``paser_assets.pool.load_pool`` (what the
``recovery_pool`` asset calls: read, validate, normalise, de-duplicate, build the pandas frame). The child
imports everything first (numpy, pandas, pyarrow, the pool package and the settings) and reads a 100-row file
(Arrow and pandas set some things up on first use), takes its peak resident memory then
(``resource.getrusage().ru_maxrss``) as the baseline, reads the N rows and reports the new peak minus the
baseline. A fresh process per N, so that no earlier file's freed memory hides or inflates this one's.

``--asset`` materializes the ``recovery_pool`` asset through Dagster instead (an ephemeral instance, a DuckDB
file in the temporary folder): the reading above, then writing the tables to DuckDB and hashing the pool for its
data version. ``--source DIR`` measures the ``paser_assets`` package in DIR instead of this checkout (a copy of
an older version, say). The last line is one JSON object: ``{"cpu": ..., "python": ..., "source": ..., "asset":
..., "runs": [{"rows": N, "file_mib": .., "baseline_mib": .., "peak_mib": .., "growth_mib": .., "bytes_per_row":
..}, ...]}``.

Measured on an AMD EPYC (2 cores), Python 3.11, pyarrow 26, pandas 3.1, reading: a million rows 260 bytes per
row before the sample ids were de-duplicated in NumPy, 177 after; 200,000 rows 290 before, 205 after. With
``--asset`` (a baseline of 540 MiB, Dagster loaded): a million rows 477 bytes per row before, 463 after (a peak
of about 990 MiB); 200,000 rows 637 and 624. The asset's peak is ``storage.content_hash`` hashing whole text
columns at once, not the reading.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20

CHILD = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import numpy, pandas, pyarrow  # noqa: F401
import paser_assets.pool
import paser_assets.settings  # noqa: F401
from paser_assets.pool import load_pool

def read(path):
    build = load_pool(path)
    return len(build.accepted)

if sys.argv[4] == "asset":
    import dagster as dg
    import duckdb
    from paser_assets import PaserConfig, PaserDuckDB, build_definitions

    def read(path):
        database = path + ".duckdb"
        defs = build_definitions(PaserConfig(dataset=path), PaserDuckDB(database=database))
        result = dg.materialize(
            [defs.get_assets_def("recovery_pool")], resources=defs.resources, instance=dg.DagsterInstance.ephemeral()
        )
        assert result.success
        with duckdb.connect(database, read_only=True) as conn:
            return conn.execute("SELECT count(*) FROM paser.recovery_pool").fetchone()[0]

read(sys.argv[2])  # a few rows first: what Arrow, pandas (and Dagster) set up once is not the rows' cost
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
accepted = read(sys.argv[3])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({
    "baseline_kib": baseline,
    "peak_kib": peak,
    "accepted": accepted,
    "module": paser_assets.pool.__file__,
}))
"""


def write_rows(path: Path, rows: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            handle.write(f'{{"instruction": "Repeat the number {i:07d}.", "output": "It is {i:07d}!!"}}\n')
    return path


def measure(rows: int, folder: Path, source: Path, asset: bool) -> dict:
    path = write_rows(folder / f"pool-{rows}.jsonl", rows)
    warm_up = write_rows(folder / "warm-up.jsonl", 100)
    command = [sys.executable, "-c", CHILD, str(source), str(warm_up), str(path), "asset" if asset else "read"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=folder, check=False)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    child = json.loads(result.stdout.strip().splitlines()[-1])
    assert child["accepted"] == rows, child
    assert child["module"].startswith(str(source.resolve())), child["module"]  # the package asked for
    growth = (child["peak_kib"] - child["baseline_kib"]) * 1024
    size = path.stat().st_size
    path.unlink()
    return {
        "rows": rows,
        "file_mib": round(size / MIB, 1),
        "baseline_mib": round(child["baseline_kib"] / 1024, 1),
        "peak_mib": round(child["peak_kib"] / 1024, 1),
        "growth_mib": round(growth / MIB, 1),
        "bytes_per_row": round(growth / rows),
    }


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 200_000])
    parser.add_argument(
        "--source", type=Path, default=REPO, help="the folder holding the paser_assets package (default: this checkout)"
    )
    parser.add_argument("--asset", action="store_true", help="materialize recovery_pool instead of load_pool alone")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="pool-memory-") as folder:
        for rows in args.rows:
            run = measure(rows, Path(folder), args.source, args.asset)
            print(
                f"{rows:>9,} rows, {run['file_mib']:.0f} MiB file: peak {run['peak_mib']:.0f} MiB over a baseline of "
                f"{run['baseline_mib']:.0f} MiB = {run['growth_mib']:.0f} MiB, {run['bytes_per_row']} bytes per row",
                flush=True,
            )
            runs.append(run)
    summary = {
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "source": str(args.source),
        "asset": args.asset,
        "runs": runs,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
