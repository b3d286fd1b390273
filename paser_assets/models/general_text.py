"""A general English text set that needs no download: documentation of Python's standard library.

Recovery on instructions can trade away general language modelling; perplexity on text unrelated to
the pool shows that. The modules' docstrings are prose written by people, they ship with every Python
and do not change within a Python version, so the measurement is offline and reproducible.
"""

from __future__ import annotations

import importlib
import inspect

from paser_assets.models.checkpoints import context_limit
from paser_assets.models.scoring import EncodedSample

MODULES = (
    "argparse", "asyncio", "bisect", "calendar", "collections", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email", "fractions", "functools", "heapq", "http.client", "itertools", "json",
    "logging", "pathlib", "pickle", "random", "statistics", "string", "subprocess", "textwrap", "threading",
    "unittest", "urllib.parse", "zipfile",
)  # fmt: skip


def general_text() -> str:
    """The docstrings of ``MODULES`` and of their public classes and functions (the long ones)."""
    parts: list[str] = []
    for name in MODULES:
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        for attribute in sorted(getattr(module, "__all__", [])):
            doc = inspect.getdoc(getattr(module, attribute, None))
            if doc and len(doc) > 200:
                parts.append(doc)
    return "\n\n".join(part.strip() for part in parts if part.strip())


def general_text_samples(tokenizer: object, tokens: int = 256, limit: int = 64) -> list[EncodedSample]:
    """Up to ``limit`` consecutive segments of ``tokens`` tokens (at most the model's context); every token
    after the first is scored."""
    tokens = min(tokens, context_limit(tokenizer) or tokens)
    # verbose=False: the whole text is longer than any model's limit, and is cut into segments below.
    ids = tokenizer(general_text(), add_special_tokens=False, verbose=False)["input_ids"]  # type: ignore[operator]
    segments = [ids[start : start + tokens] for start in range(0, len(ids) - tokens + 1, tokens)][:limit]
    return [EncodedSample(f"general-{i:03d}", tuple(segment), 1, False) for i, segment in enumerate(segments)]
