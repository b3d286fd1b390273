"""Thin Dagster assets: each wires resources and config to a pure algorithm and writes a table."""
