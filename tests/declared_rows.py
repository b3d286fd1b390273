"""Rows for any declared table, made from its declaration alone, so tests cover every table and type."""

from __future__ import annotations

import numpy as np
import pandas as pd

from paser_assets.tables import Table


def example_value(sql_type: str, row: int, column: str) -> object:
    """A plain value of ``sql_type`` that differs per row (lists hold one item per row number, at least one)."""
    if sql_type == "VARCHAR":
        return f"{column}-{row}"
    if sql_type == "BIGINT":
        return row
    if sql_type in ("DOUBLE", "FLOAT"):
        return row + 0.5
    if sql_type == "BOOLEAN":
        return row % 2 == 0
    if sql_type == "VARCHAR[]":
        return [f"{column}-{row}-{i}" for i in range(row + 1)]
    if sql_type == "FLOAT[]":
        return np.full(3, row + 0.25, dtype=np.float32)
    raise AssertionError(f"no example value for the declared type {sql_type}: add one here")


def example_rows(table: Table, rows: int = 2, **fixed: object) -> pd.DataFrame:
    """``rows`` rows of ``table`` with every declared column; ``fixed`` sets columns to one value (variant=...)."""
    return pd.DataFrame(
        {
            column: [fixed[column] if column in fixed else example_value(sql_type, i, column) for i in range(rows)]
            for column, sql_type in table.types.items()
        }
    )
