"""paser-assets: PASER post-training data selection for pruned LLM recovery, as Dagster assets.

PASER is due to He et al., "PASER: Post-Training Data Selection for Efficient Pruned Large
Language Model Recovery" (arXiv 2502.12594).
"""

from paser_assets.component import PaserComponent
from paser_assets.graph import build_definitions
from paser_assets.resources import PaserConfig, PaserDuckDB

__all__ = ["PaserComponent", "PaserConfig", "PaserDuckDB", "build_definitions"]
__version__ = "0.1.0"
