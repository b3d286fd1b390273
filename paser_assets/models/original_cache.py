"""On-disk cache of the original model's top-k next-token log-probabilities per response token.

Layout: ``<folder>/<key>/part-<n>.parquet`` plus ``manifest.json``. The key hashes everything the
summaries depend on (original checkpoint hash, prompt recipe, max_tokens, k), so a re-pruned
variant reuses them and a different original never does. Each part file is written to a temporary
name and renamed, so an interrupted run leaves whole parts only; the manifest keeps the measured
gap between the lumped and the exact JSD.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class OriginalSummary:
    """The original model's summary for one sample: (tokens, k) ids and log-probs, and per-token NLL."""

    ids: np.ndarray  # int32, (tokens, k)
    log_probs: np.ndarray  # float32, (tokens, k)
    nll: np.ndarray  # float32, (tokens,)


class OriginalOutputCache:
    """Summaries keyed by sample_id under one cache key; parts are loaded lazily, a few at a time."""

    def __init__(self, folder: Path, key: str, k: int, keep_parts: int = 4) -> None:
        self.folder = Path(folder) / key
        self.k = k
        self.keep_parts = keep_parts
        self._loaded: OrderedDict[Path, dict[str, OriginalSummary]] = OrderedDict()
        self._index: dict[str, Path] = {}
        if self.folder.is_dir():
            for part in sorted(self.folder.glob("part-*.parquet")):
                for sample_id in pq.read_table(part, columns=["sample_id"]).column(0).to_pylist():
                    self._index.setdefault(sample_id, part)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._index

    def __len__(self) -> int:
        return len(self._index)

    def _part(self, path: Path) -> dict[str, OriginalSummary]:
        if path in self._loaded:
            self._loaded.move_to_end(path)
            return self._loaded[path]
        table = pq.read_table(path)
        entries = {}
        for sample_id, tokens, ids, log_probs, nll in zip(
            *(table.column(c).to_pylist() for c in table.column_names), strict=True
        ):
            entries[sample_id] = OriginalSummary(
                np.frombuffer(ids, dtype=np.int32).reshape(tokens, self.k),
                np.frombuffer(log_probs, dtype=np.float32).reshape(tokens, self.k),
                np.frombuffer(nll, dtype=np.float32),
            )
        self._loaded[path] = entries
        while len(self._loaded) > self.keep_parts:
            self._loaded.popitem(last=False)
        return entries

    def get(self, sample_id: str) -> OriginalSummary:
        return self._part(self._index[sample_id])[sample_id]

    def put(self, summaries: dict[str, OriginalSummary]) -> None:
        """Write one part file atomically (temporary name, then rename)."""
        fresh = {s: v for s, v in summaries.items() if s not in self._index}
        if not fresh:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "sample_id": list(fresh),
                "tokens": [int(v.nll.shape[0]) for v in fresh.values()],
                "ids": [np.ascontiguousarray(v.ids, dtype=np.int32).tobytes() for v in fresh.values()],
                "log_probs": [np.ascontiguousarray(v.log_probs, dtype=np.float32).tobytes() for v in fresh.values()],
                "nll": [np.ascontiguousarray(v.nll, dtype=np.float32).tobytes() for v in fresh.values()],
            }
        )
        number = len(list(self.folder.glob("part-*.parquet")))
        target = self.folder / f"part-{number:06d}-{os.getpid()}.parquet"
        handle, temporary = tempfile.mkstemp(prefix=".part-", suffix=".tmp", dir=self.folder)
        os.close(handle)
        try:
            pq.write_table(table, temporary)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        for sample_id in fresh:
            self._index[sample_id] = target

    def record_error(self, mean_abs: float, max_abs: float, samples: int) -> None:
        """Keep the measured gap between lumped and exact JSD (sample means) in the manifest."""
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self.manifest()
        seen = int(manifest.get("error_samples", 0))
        total = seen + samples
        if total:
            manifest["jsd_mean_abs_err"] = (manifest.get("jsd_mean_abs_err", 0.0) * seen + mean_abs * samples) / total
            manifest["jsd_max_abs_err"] = max(manifest.get("jsd_max_abs_err", 0.0), max_abs)
            manifest["error_samples"] = total
        manifest["k"] = self.k
        temporary = self.folder / ".manifest.json.tmp"
        temporary.write_text(json.dumps(manifest))
        os.replace(temporary, self.folder / "manifest.json")

    def manifest(self) -> dict:
        path = self.folder / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else {}
