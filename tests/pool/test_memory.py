"""Memory grows with the rows kept, not with the file's decoded size or with Python's overhead per row.

Peak resident memory is measured in a child process around ``load_pool`` (Arrow's buffers are not Python
allocations, so tracemalloc would miss them). Measured on the development machine with these files:

    file                                   before the streaming readers   after
    8,192 x 200 KB Parquet (dictionary)    809 MB                         19 MB
    2,048 x 200 KB Parquet (plain, zstd)   -                              28 MB
    1,000,000-row JSONL, 75 MB             834 MB (11.7 x the file)       260 MB (3.6 x), then 170 MB (2.3 x)
    250,000-item JSON array, 19 MB         275 MB (15 x)                  69 MB (3.8 x), then 63 MB (3.3 x)

"then": with the sample ids de-duplicated in NumPy and the numbers kept there, not in a dict of Python ints.

The bounds below leave room for other allocators and Python builds, and stay far below the old figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.system

MB = 1 << 20
BIG = "x" * 200_000

# Measures VmHWM - VmRSS across load_pool of one file, in a fresh process so that no earlier file's freed
# memory can hide (or, given back, inflate) this one's. The package's __init__ loads Dagster, seconds per
# process that the pool does not need, so the child maps the package to its folder without running it.
CHILD = r"""
import json, re, sys, types
package = types.ModuleType("paser_assets")
package.__path__ = [sys.argv[1]]
sys.modules["paser_assets"] = package
import paser_assets.pool
from paser_assets.pool import load_pool
assert paser_assets.pool.__file__.startswith(sys.argv[1]), paser_assets.pool.__file__  # not another checkout

def status(field):
    with open("/proc/self/status") as handle:
        return int(re.search(field + r":\s+(\d+)", handle.read()).group(1)) * 1024

before = status("VmRSS")
build = load_pool(sys.argv[2])
growth = status("VmHWM") - before
print(json.dumps({"growth": growth, "accepted": len(build.accepted), "rejected": len(build.rejected)}))
"""
PACKAGE = Path(__file__).parents[2] / "paser_assets"


def measure(path: Path) -> dict[str, int]:
    """Peak memory growth (bytes) while ``load_pool`` reads ``path``, and the rows kept and rejected."""
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc")
    command = [sys.executable, "-c", CHILD, str(PACKAGE), str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def dictionary_parquet(path: Path) -> Path:
    """One good row, then 8,192 rows pointing at one 200 KB string: about 1 KB on disk, 1.6 GB decoded."""
    indices = pa.array([0] + [1] * 8192, pa.int32())
    outputs = pa.DictionaryArray.from_arrays(indices, pa.array(["5", BIG]))
    pq.write_table(pa.table({"instruction": pa.array(["Add."] * 8193), "output": outputs}), path)
    return path


def plain_parquet(path: Path) -> Path:
    """The same without a dictionary: 2,048 distinct-looking 200 KB values, compressed to a few KB."""
    schema = pa.schema([("instruction", pa.string()), ("output", pa.string())])
    with pq.ParquetWriter(path, schema, use_dictionary=False, compression="zstd") as writer:
        writer.write_table(pa.table({"instruction": ["Add."], "output": ["5"]}, schema=schema))
        for _ in range(32):  # written in slices, so the test itself never holds the decoded column
            writer.write_table(pa.table({"instruction": ["Repeat."] * 64, "output": [BIG] * 64}, schema=schema))
    return path


def million_jsonl(path: Path) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(1_000_000):
            handle.write(f'{{"instruction": "Repeat the number {i:07d}.", "output": "It is {i:07d}!!"}}\n')
    return path


def json_array(path: Path, rows: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        handle.write("[\n")
        items = (f'{{"instruction": "Repeat the number {i:07d}.", "output": "It is {i:07d}!!"}}' for i in range(rows))
        handle.write(",\n".join(items))
        handle.write("\n]\n")
    return path


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, tuple[int, dict[str, int]]]:
    """(file size, measurement) by name."""
    folder = tmp_path_factory.mktemp("memory")
    files = {
        "dictionary.parquet": dictionary_parquet(folder / "dictionary.parquet"),
        "plain.parquet": plain_parquet(folder / "plain.parquet"),
        "million.jsonl": million_jsonl(folder / "million.jsonl"),
        "array.json": json_array(folder / "array.json", 250_000),
    }
    return {name: (path.stat().st_size, measure(path)) for name, path in files.items()}


@pytest.mark.parametrize("name", ["dictionary.parquet", "plain.parquet"])
def test_parquet_values_that_decode_to_gigabytes_are_rejected_in_bounded_memory(measured, name):
    size, result = measured[name]
    assert size < 1 * MB
    assert result["accepted"] == 1 and result["rejected"] in (8192, 2048)
    assert result["growth"] < 100 * MB, f"{result['growth'] / MB:.0f} MB"


def test_a_million_row_jsonl_peaks_below_five_times_its_size(measured):
    size, result = measured["million.jsonl"]
    assert result["accepted"] == 1_000_000
    assert result["growth"] < 5 * size, f"{result['growth'] / MB:.0f} MB for a {size / MB:.0f} MB file"


def test_a_million_short_jsonl_rows_cost_under_200_bytes_each(measured):
    """What a kept row costs at the peak: its columns (about 140 bytes for these rows) and little else. Measured:
    about 170 bytes; 260 when the sample ids were kept in a dict of Python ints and the numbers in Arrow chunks."""
    _, result = measured["million.jsonl"]
    per_row = result["growth"] / result["accepted"]
    assert per_row < 200, f"{per_row:.0f} bytes per row"


def test_a_large_json_array_is_streamed_item_by_item(measured):
    size, result = measured["array.json"]
    assert result["accepted"] == 250_000
    assert result["growth"] < 5 * size, f"{result['growth'] / MB:.0f} MB for a {size / MB:.0f} MB file"
