"""On-disk cache of the original model's final hidden states on the response tokens.

Re-pruning does not change the original model. Its next-token distributions are softmax(head(h))
with h the final (normed) hidden state, so keeping h for every response token, in float16, is
enough to compute the JSD and NLL against any later pruned model with one matrix product, without
running the original transformer again. (Keeping only top-k log-probabilities plus the tail mass
was measured first and rejected: lumping the rest of the vocabulary into one bin misses most of the
divergence of a heavily pruned model, 0.034 nats on average at k = 64 and still 0.0075 at k = 1024
against a 1e-3 target; a float16 state per token costs about as much as k = 144.)

Layout: ``<folder>/<key>/part-<n>.parquet``. The key hashes everything the states depend on
(original checkpoint hash, prompt recipe, max_tokens), so a re-pruned variant reuses them and a
different original never does. Each part is written to a temporary name and renamed, so an
interrupted run leaves whole parts only.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_COLUMNS = ("sample_id", "tokens", "width", "dtype", "hidden")


@dataclass(frozen=True)
class OriginalStates:
    """The original model's final hidden states on one sample's response positions: (tokens, hidden)."""

    hidden: np.ndarray  # float16, or float32 where float16 would overflow


def compact_states(hidden: np.ndarray) -> OriginalStates:
    """float16 states, or float32 when a value would not fit float16's range."""
    with np.errstate(over="ignore"):  # an overflow is detected below and handled
        half = hidden.astype(np.float16)
    return OriginalStates(half if np.isfinite(half).all() else hidden.astype(np.float32))


class OriginalOutputCache:
    """Hidden states keyed by sample_id under one cache key; parts are loaded lazily, a few at a time."""

    def __init__(self, folder: Path, key: str, keep_parts: int = 4) -> None:
        self.folder = Path(folder) / key
        self.keep_parts = keep_parts
        self._loaded: OrderedDict[Path, dict[str, OriginalStates]] = OrderedDict()
        self._index: dict[str, Path] = {}
        if self.folder.is_dir():
            for part in sorted(self.folder.glob("part-*.parquet")):
                for sample_id in pq.read_table(part, columns=["sample_id"]).column(0).to_pylist():
                    self._index.setdefault(sample_id, part)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._index

    def __len__(self) -> int:
        return len(self._index)

    def _part(self, path: Path) -> dict[str, OriginalStates]:
        if path in self._loaded:
            self._loaded.move_to_end(path)
            return self._loaded[path]
        table = pq.read_table(path)
        columns = [table.column(name).to_pylist() for name in _COLUMNS]
        entries = {
            sample_id: OriginalStates(np.frombuffer(hidden, dtype=dtype).reshape(tokens, width))
            for sample_id, tokens, width, dtype, hidden in zip(*columns, strict=True)
        }
        self._loaded[path] = entries
        while len(self._loaded) > self.keep_parts:
            self._loaded.popitem(last=False)
        return entries

    def get(self, sample_id: str) -> OriginalStates:
        return self._part(self._index[sample_id])[sample_id]

    def put(self, states: dict[str, OriginalStates]) -> None:
        """Write one part file atomically (temporary name, then rename)."""
        fresh = {s: v for s, v in states.items() if s not in self._index}
        if not fresh:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "sample_id": list(fresh),
                "tokens": [int(v.hidden.shape[0]) for v in fresh.values()],
                "width": [int(v.hidden.shape[1]) for v in fresh.values()],
                "dtype": [str(v.hidden.dtype) for v in fresh.values()],
                "hidden": [np.ascontiguousarray(v.hidden).tobytes() for v in fresh.values()],
            }
        )
        number = len(list(self.folder.glob("part-*.parquet")))
        target = self.folder / f"part-{number:06d}-{os.getpid()}.parquet"
        from paser_assets import storage  # here, not at the top: it imports DuckDB and Dagster

        storage.write_atomically(target, lambda temporary: pq.write_table(table, str(temporary)))
        for sample_id in fresh:
            self._index[sample_id] = target

    def size_bytes(self) -> int:
        return sum(part.stat().st_size for part in self.folder.glob("part-*.parquet")) if self.folder.is_dir() else 0
