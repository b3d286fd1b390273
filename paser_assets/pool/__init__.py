"""Reading, validating and generating the recovery pool (the instruction data PASER selects from)."""

from paser_assets.pool.demo import generate_demo_pool
from paser_assets.pool.readers import PoolInputError, RawRow, read_dataset
from paser_assets.pool.records import FieldMapping, PoolBuild, build_pool, require_usable

__all__ = [
    "FieldMapping",
    "PoolBuild",
    "PoolInputError",
    "RawRow",
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
    demo_size: int = 480,
    seed: int = 0,
) -> PoolBuild:
    """Read ``dataset`` (or generate the demo pool when it is None) into a validated pool."""
    if dataset is None:
        rows = (RawRow("demo", i, record) for i, record in enumerate(generate_demo_pool(demo_size, seed), start=1))
        spec = "the generated demo pool"
    else:
        rows = read_dataset(dataset, split)
        spec = dataset
    build = build_pool(rows, FieldMapping(field_map or {}), max_chars)
    require_usable(build, spec)
    return build
