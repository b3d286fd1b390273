"""Pure PASER algorithms: numpy, torch and scikit-learn only, no Dagster.

Each module holds one concept of the method (He et al., 2025, arXiv 2502.12594) so that it can be
unit-tested alone and reused outside Dagster.
"""
