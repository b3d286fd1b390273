"""The default Definitions that ``dagster dev`` loads, configured from ``PASER_*`` variables.

A function under ``@dg.definitions``, so that Dagster gives it the load context: the variants are read from the
registry when the code location starts, and reused from that load in every run worker (see ``build_definitions``).
"""

import dagster as dg

from paser_assets.graph import build_definitions


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
