"""The default Definitions that ``dagster dev`` and the CLI load, configured from ``PASER_*`` variables."""

from paser_assets.graph import build_definitions

defs = build_definitions()
