"""Rewrite the generated parts of docs/reference.md from the declarations (a development script, not shipped).

The settings reference comes from ``paser_assets/settings.py`` (and the database's own settings on
``PaserDuckDB``), the table reference from ``paser_assets/tables.py``. Each lies between two markers in
docs/reference.md; the text around them is written by hand and left alone.

    .venv/bin/python scripts/reference.py           # rewrite docs/reference.md
    .venv/bin/python scripts/reference.py --check   # exit 1 when it is out of date, change nothing

tests/test_settings.py and tests/test_tables.py run the check.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference.md"
UPDATE_COMMAND = ".venv/bin/python scripts/reference.py"
SETTINGS_START = f"<!-- settings:start (generated from paser_assets/settings.py by {UPDATE_COMMAND}) -->"
SETTINGS_END = "<!-- settings:end -->"
TABLES_START = f"<!-- tables:start (generated from paser_assets/tables.py by {UPDATE_COMMAND}) -->"
TABLES_END = "<!-- tables:end -->"


def shown_default(value: Any) -> str:
    """A default as the reference shows it: unset, 0/1 for switches, lists and maps in their env form."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict):
        return "–" if not value else ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(value)
    return f"`{value}`" if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def settings_markdown(database_settings: Mapping[str, tuple[str, Any, str]] | None = None) -> str:
    """The settings reference, one table per stage, made from the declarations."""
    from paser_assets.settings import STAGES, PaserConfig, all_settings

    defaults = PaserConfig()
    lines = []
    if database_settings:
        lines += ["**Database**", "", "| variable | default | meaning |", "|---|---|---|"]
        lines += [f"| `{env}` | {shown_default(d)} | {text} |" for env, d, text in database_settings.values()]
        lines.append("")
    for stage in (None, *STAGES):
        items = [item for item in all_settings() if item.stage == stage]
        title = "Run" if stage is None else f"`{stage}`: {STAGES[stage].__doc__}"
        lines += [f"**{title}**", "", "| variable | default | changes | meaning |", "|---|---|---|---|"]
        for item in items:
            text = item.description.replace("|", "\\|")
            default = shown_default(defaults.value(item.path))
            lines.append(f"| `{item.env}` | {default} | {item.affects} | {text} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def tables_markdown() -> str:
    """The table reference: one row per declared table."""
    from paser_assets.tables import TABLES

    lines = ["| table | written by | per variant | columns | what it holds |", "|---|---|---|---|---|"]
    for table in TABLES.values():
        writers = ", ".join(f"`{w}`" for w in table.writers) or "the variant registry"
        columns = ", ".join(f"`{name}` {sql_type}" for name, sql_type in table.types.items())
        lines.append(
            f"| `{table.name}` | {writers} | {'yes' if table.per_variant else 'no'} | {columns} | {table.description} |"
        )
    return "\n".join(lines) + "\n"


def replaced(text: str, start: str, end: str, body: str) -> str:
    """``text`` with what lies between the markers ``start`` and ``end`` replaced by ``body``."""
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"expected the markers {start!r} and {end!r} once each")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    return f"{head}{start}\n{body}{end}{tail}"


def generated(text: str) -> str:
    """docs/reference.md's ``text`` with both generated parts made from the declarations."""
    from paser_assets.resources import PaserDuckDB

    text = replaced(text, SETTINGS_START, SETTINGS_END, settings_markdown(PaserDuckDB.documented_settings()))
    return replaced(text, TABLES_START, TABLES_END, tables_markdown())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/reference.md is out of date")
    parser.add_argument("--path", type=Path, default=REFERENCE, help="the reference page (default: %(default)s)")
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    new = generated(text)
    if args.check:
        if new != text:
            print(f"{args.path} is out of date: run {UPDATE_COMMAND}", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.path.write_text(new, encoding="utf-8")
        print(f"rewrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run from a checkout: the package beside this script
    raise SystemExit(main())
