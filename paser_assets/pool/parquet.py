"""Read Parquet files in bounded batches, checking text lengths in Arrow before anything becomes Python.

A Parquet file can hold one long string in a dictionary and point every row at it: 1 KB on disk, GBs
once decoded. So text columns are read as dictionaries (decoded once, shared by the rows), batches are
sized by the row group's decoded bytes, and a value over the limit is never converted: it stands as
:class:`Unread`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from paser_assets.pool.rows import DEFAULT_LIMITS, PoolInputError, RawRow, ReadLimits, Unread

# Decoded bytes per batch (from the row group's own statistics) and the most rows per batch.
BATCH_BYTES = 32 << 20
BATCH_ROWS = 4096


def _is_text(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_binary(data_type)
        or pa.types.is_large_binary(data_type)
    )


def _is_string(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def _open(path: Path, source: str) -> pq.ParquetFile:
    try:
        schema = pq.ParquetFile(path).schema_arrow
        text_columns = [f.name for f in schema if _is_text(f.type)]
        return pq.ParquetFile(path, read_dictionary=text_columns)
    except Exception as error:  # pyarrow raises several unrelated types for corrupt files
        raise PoolInputError(f"{source}: not a readable Parquet file: {error}") from None


def _batch_rows(metadata: pq.RowGroupMetaData) -> int:
    bytes_per_row = metadata.total_byte_size / max(metadata.num_rows, 1)
    return max(1, min(BATCH_ROWS, int(BATCH_BYTES // max(bytes_per_row, 1))))


def _strings(array: pa.Array) -> list[Any]:
    """Python values of a string array; one with bytes that are not UTF-8 keeps them as lone surrogates."""
    try:
        return array.to_pylist()
    except UnicodeDecodeError:
        # Arrow does not check UTF-8 when it reads; this turns one bad value into an undecodable row.
        binary = array.cast(pa.large_binary() if pa.types.is_large_string(array.type) else pa.binary())
        return [None if b is None else b.decode("utf-8", "surrogateescape") for b in binary.to_pylist()]


def _text_values(array: pa.Array, limits: ReadLimits) -> list[Any]:
    is_string = _is_string(array.type)
    lengths = pc.utf8_length(array) if is_string else pc.binary_length(array)
    over = pc.fill_null(pc.greater(lengths, limits.value_chars), False)
    if not pc.any(over).as_py():
        return _strings(array) if is_string else array.to_pylist()
    kept = pc.if_else(over, pa.scalar(None, array.type), array)
    values = _strings(kept) if is_string else kept.to_pylist()
    type_name = "str" if is_string else "bytes"
    for position in pc.indices_nonzero(over).to_pylist():
        values[position] = Unread(type_name, lengths[position].as_py())
    return values


def column_values(array: pa.Array, limits: ReadLimits = DEFAULT_LIMITS) -> list[Any]:
    """The Python values of one column of a batch, with over-long texts left :class:`Unread`."""
    if pa.types.is_dictionary(array.type):
        # Decode each distinct value once; rows share the Python object.
        distinct = column_values(array.dictionary, limits)
        return [None if i is None else distinct[i] for i in array.indices.to_pylist()]
    if _is_text(array.type):
        return _text_values(array, limits)
    return array.to_pylist()


def _batches(parquet_file: pq.ParquetFile, source: str) -> Iterator[pa.RecordBatch]:
    metadata = parquet_file.metadata
    read = 0
    for group in range(metadata.num_row_groups):
        rows = _batch_rows(metadata.row_group(group))
        batches = parquet_file.iter_batches(batch_size=rows, row_groups=[group], use_threads=False)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as error:  # a corrupt data page surfaces only when it is read
                raise PoolInputError(f"{source}: not a readable Parquet file (near row {read + 1}): {error}") from None
            read += batch.num_rows
            yield batch


def read_parquet(path: Path, source: str, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[RawRow]:
    parquet_file = _open(path, source)
    index = 1
    for batch in _batches(parquet_file, source):
        names = batch.schema.names
        columns = [column_values(batch.column(i), limits) for i in range(batch.num_columns)]
        rows = zip(*columns, strict=True) if columns else ((),) * batch.num_rows
        for values in rows:
            yield RawRow(source, index, dict(zip(names, values, strict=True)))
            index += 1
