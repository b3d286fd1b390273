"""Reading, validating and generating the recovery pool (the instruction data PASER selects from)."""

from collections.abc import Sequence
from pathlib import Path

from paser_assets.pool.demo import DEFAULT_DEMO_SIZE, generate_demo_pool
from paser_assets.pool.folders import SkippedPath
from paser_assets.pool.readers import PoolInputError, RawRow, ReadLimits, read_dataset
from paser_assets.pool.records import FieldMapping, PoolBuild, build_pool, require_usable

__all__ = [
    "FieldMapping",
    "PoolBuild",
    "PoolInputError",
    "RawRow",
    "ReadLimits",
    "SkippedPath",
    "build_pool",
    "generate_demo_pool",
    "load_pool",
    "read_dataset",
    "require_usable",
]


def load_pool(
    dataset: str | None,
    *,
    split: str = "train",
    field_map: dict[str, str] | None = None,
    max_chars: int = 20_000,
    demo_size: int = DEFAULT_DEMO_SIZE,
    seed: int = 0,
    exclude: Sequence[str | Path] = (),
) -> PoolBuild:
    """Read ``dataset`` (or generate the demo pool when it is None) into a validated pool.

    ``exclude``: the plugin's own outputs (DuckDB file, model cache, export folder), never read as data
    even when they lie inside a dataset folder. What a folder holds but is not read is in ``skipped``.
    """
    mapping = FieldMapping(field_map or {})
    skipped: list[SkippedPath] = []
    if dataset is None:
        rows = (RawRow("demo", i, record) for i, record in enumerate(generate_demo_pool(demo_size, seed), start=1))
        spec = "the generated demo pool"
    else:
        limits = ReadLimits.for_pool(max_chars)
        rows = read_dataset(dataset, split, limits=limits, exclude=exclude, skipped=skipped)
        spec = dataset
    build = build_pool(rows, mapping, max_chars)
    build.skipped = skipped
    require_usable(build, spec)
    return build
