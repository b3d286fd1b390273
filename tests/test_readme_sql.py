"""Every code block of the README and of docs/, checked: each SQL block run as a user would (`duckdb runs.duckdb`,
then the block) against a real database with two variants in a file not named paser.duckdb, and what each query
returns, variant by variant; the Python blocks run; the shell blocks' commands parsed (`paser` commands by the
CLI's own parser, `make` targets against the Makefile, `PASER_*` variables against the settings), not run.

A query is named by the comment line above it; every query of the pages must have a check here, so a query
added without one fails the test. The expected values are computed here from the tables (qualified by catalog
and schema, so they do not share the pages' way of naming them).
"""

from __future__ import annotations

import re
import shlex
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
import tomllib
import yaml
from two_variants import ADDED, BUILT_IN, FILE_NAME, VARIANTS, TwoVariants

from paser_assets import PaserDuckDB, storage

pytestmark = pytest.mark.system

CATALOG = FILE_NAME.split(".")[0]
QUERY_VERBS = ("SELECT", "PIVOT", "WITH", "FROM")


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
# Fenced blocks that are not code: the asset graph's drawing (no language) and formulas.
NOT_CODE = ("", "text", "math")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block, indented ones (inside a list item) dedented."""
    found = re.findall(r"^([ \t]*)```([\w-]*)\n(.*?)^\1```[ \t]*$", text, flags=re.S | re.M)
    return [(language, textwrap.dedent(code)) for _, language, code in found]


def sql_blocks(text: str) -> list[str]:
    return [code for language, code in fenced_blocks(text) if language == "sql"]


def page_blocks(language: str) -> list[tuple[str, str]]:
    """(page relative to the repository, code) of every block in that language, over the README and docs/."""
    return [
        (str(page.relative_to(ROOT)), code)
        for page in PAGES
        for block_language, code in fenced_blocks(page.read_text(encoding="utf-8"))
        if block_language == language
    ]


SQL_BLOCKS = page_blocks("sql")


def is_query(statement: str) -> bool:
    return statement.lstrip().upper().startswith(QUERY_VERBS)


def statements(block: str) -> list[tuple[str, str]]:
    """(label, statement) in order. A query's label is the last comment line above it; a statement that is
    not a query (SET, ATTACH) may come between the two, as in "-- two runs compared / ATTACH / SELECT"."""
    found, label, lines = [], "", []
    for line in block.splitlines():
        code = line.split("--", 1)[0].strip()
        if not code and not lines:
            if line.strip().startswith("--"):
                label = line.strip().removeprefix("--").strip()
            continue
        lines.append(line)
        if code.endswith(";"):
            statement = "\n".join(lines)
            found.append((label if is_query(statement) else "", statement))
            label = "" if is_query(statement) else label
            lines = []
    assert not lines, f"a statement of the pages does not end with ';': {lines}"
    return found


def table(data: TwoVariants, sql: str) -> pd.DataFrame:
    """A query on the database in its own words: tables fully qualified, no current schema set."""
    with duckdb.connect(data.database.database, read_only=True) as conn:
        return conn.execute(sql.replace("T.", f"{CATALOG}.paser.")).df()


def scores(data: TwoVariants) -> pd.DataFrame:
    return table(data, "SELECT * FROM T.degradation_scores")


def degradation(data: TwoVariants) -> pd.DataFrame:
    return table(data, "SELECT * FROM T.capability_degradation")


def selection(data: TwoVariants) -> pd.DataFrame:
    return table(data, "SELECT * FROM T.selection")


def instructions(data: TwoVariants) -> pd.Series:
    """sample_id -> instruction of the pool."""
    return table(data, "SELECT sample_id, instruction FROM T.recovery_pool").set_index("sample_id")["instruction"]


def selected_ids(data: TwoVariants, variant: str) -> set[str]:
    frame = selection(data)
    return set(frame.loc[(frame["variant"] == variant) & (frame["decision"] == "selected"), "sample_id"])


def assert_per_variant_blocks(result: pd.DataFrame) -> None:
    """Rows of both variants, one variant's rows after the other's (the queries order by variant)."""
    assert list(dict.fromkeys(result["variant"])) == sorted(VARIANTS)


# -- the checks, one per README query: (data, result) -> None


def cds_pivot(data: TwoVariants, result: pd.DataFrame) -> None:
    expected = degradation(data).assign(cds=lambda f: f["cds"].round(4))
    expected = expected.pivot(index="cluster", columns="variant", values="cds").reset_index()
    assert list(result.columns) == ["cluster", *sorted(VARIANTS)]
    pd.testing.assert_frame_equal(
        result.reset_index(drop=True), expected[result.columns], check_names=False, check_dtype=False
    )
    assert (result[BUILT_IN] != result[ADDED]).any()  # two different variants, not one twice


def overlap(data: TwoVariants, result: pd.DataFrame) -> None:
    shared = len(selected_ids(data, BUILT_IN) & selected_ids(data, ADDED))
    assert 0 < shared < len(selected_ids(data, BUILT_IN))
    assert list(result.itertuples(index=False, name=None)) == [(*sorted(VARIANTS), shared)]


def mean_per_variant(data: TwoVariants, result: pd.DataFrame) -> None:
    frame = scores(data)
    assert list(result["variant"]) == sorted(VARIANTS)
    for row in result.itertuples(index=False):
        mine = frame[frame["variant"] == row.variant]
        assert row.mean_jsd == pytest.approx(mine["jsd"].mean())
        assert row.nll_gap == pytest.approx((mine["pruned_nll"] - mine["original_nll"]).mean())
    assert result["mean_jsd"].nunique() == 2


def recovery_methods(data: TwoVariants, result: pd.DataFrame) -> None:
    # the headline metrics only (no per-cluster rows), each variant's arms by value: paser first for one, not the other
    expected = []
    for variant in sorted(VARIANTS):
        for metric in ("heldout_nll", "ppl:wikitext2"):
            values = RECOVERY_VALUES[variant][metric]
            for method in sorted(values, key=values.__getitem__):
                ratio = (values[method] - values["pruned"]) / (values["original"] - values["pruned"])
                expected.append((variant, method, metric, values[method], round(ratio, 3), RECOVERY_TOKENS.get(method)))
    rows = [tuple(None if pd.isna(v) else v for v in row) for row in result.itertuples(index=False, name=None)]
    assert rows == expected
    best = {variant: rows[[r[0] for r in rows].index(variant) + 2][1] for variant in VARIANTS}  # after original
    assert sorted(best.values()) == ["paser", "random"]


def cluster_profiles(data: TwoVariants, result: pd.DataFrame) -> None:
    clusters = table(data, "SELECT cluster, count(*) AS size FROM T.clusters GROUP BY cluster ORDER BY cluster")
    assert list(result["cluster"]) == list(clusters["cluster"])
    assert list(result["size"]) == list(clusters["size"])
    assert all(len(phrases) > 0 for phrases in result["top_keyphrases"])


def clusters_by_cds(data: TwoVariants, result: pd.DataFrame) -> None:
    assert_per_variant_blocks(result)
    expected = degradation(data)
    for variant in VARIANTS:
        mine, theirs = result[result["variant"] == variant], expected[expected["variant"] == variant]
        assert list(mine["cds"]) == sorted(theirs["cds"].round(4), reverse=True)
        assert sorted(mine["cluster"]) == sorted(theirs["cluster"])
        assert mine["budget"].sum() == theirs["budget"].sum() > 0  # each variant's own budget, not the sum


def most_degraded(data: TwoVariants, result: pd.DataFrame) -> None:
    assert_per_variant_blocks(result)
    frame = scores(data)
    pool = instructions(data)
    for variant in VARIANTS:
        top = frame[frame["variant"] == variant].sort_values(["jsd", "sample_id"], ascending=[False, True]).head(5)
        mine = result[result["variant"] == variant]
        assert list(mine["jsd"]) == list(top["jsd"])
        assert list(mine["instruction"]) == [pool[s] for s in top["sample_id"]]


def rejected(data: TwoVariants, result: pd.DataFrame) -> None:
    assert list(result.itertuples(index=False, name=None)) == [
        ("malformed_row", 1, "pool.jsonl:42"),
        ("missing_output", 1, "pool.jsonl:41"),
    ]


def selection_with_text(data: TwoVariants, result: pd.DataFrame) -> None:
    assert_per_variant_blocks(result)
    frame = selection(data)
    pool = instructions(data)
    chosen = frame[frame["decision"] == "selected"].sort_values(["variant", "cluster", "rank"])
    assert list(result["instruction"]) == [pool[s] for s in chosen["sample_id"]]
    assert list(result["cluster"]) == list(chosen["cluster"])
    assert list(result["ies"]) == list(chosen["ies"].round(4))
    assert dict(result["variant"].value_counts()) == {v: len(selected_ids(data, v)) for v in VARIANTS}


def concept_conflicts(data: TwoVariants, result: pd.DataFrame) -> None:
    frame = selection(data)
    conflicts = frame[frame["decision"] == "concept_conflict"].sort_values(["variant", "cluster", "rank"])
    assert set(conflicts["variant"]) == set(VARIANTS)  # the strict rule rejects some of both
    assert list(result[["variant", "cluster", "rank"]].itertuples(index=False, name=None)) == list(
        conflicts[["variant", "cluster", "rank"]].itertuples(index=False, name=None)
    )
    assert all(len(pairs) > 0 for pairs in result["conflict_pairs"])


def acceptance(data: TwoVariants, result: pd.DataFrame) -> None:
    assert_per_variant_blocks(result)
    frame = selection(data)
    budgets = degradation(data).groupby("variant")["budget"].sum()
    for row in result.itertuples(index=False):
        mine = frame[(frame["variant"] == row.variant) & (frame["cluster"] == row.cluster)]
        assert row.selected == (mine["decision"] == "selected").sum()
        assert row.considered == (mine["decision"] != "budget_full").sum()
    for variant in VARIANTS:
        assert result.loc[result["variant"] == variant, "selected"].sum() == budgets[variant]


def two_runs(data: TwoVariants, result: pd.DataFrame) -> None:
    only_a = [(ADDED, sample_id, True, False) for sample_id in sorted(RUN_B_CHANGES["only_in_a"])]
    only_b = [(BUILT_IN, sample_id, False, True) for sample_id in sorted(RUN_B_CHANGES["only_in_b"])]
    assert list(result.itertuples(index=False, name=None)) == sorted(only_a + only_b)


CHECKS: dict[str, Callable[[TwoVariants, pd.DataFrame], None]] = {
    "CDS per cluster, one column per variant": cds_pivot,
    "how much the selections of each pair of variants overlap": overlap,
    "mean degradation and NLL gap per variant": mean_per_variant,
    "the arms per variant on the headline metrics, best first, with their recovery ratio and training tokens": (
        recovery_methods
    ),
    "clusters with their sizes and what they are about": cluster_profiles,
    "clusters by capability degradation, with their budget, per variant": clusters_by_cds,
    "the five most degraded samples of each variant": most_degraded,
    "what was rejected from the input, and why": rejected,
    "the selection with its text and scores": selection_with_text,
    "what the concept filter rejected, and which concept pairs conflicted": concept_conflicts,
    "acceptance per cluster": acceptance,
    "two runs compared, variant by variant (e.g. another pool or tolerance written to run_b.duckdb)": two_runs,
}

# recovery_comparison is written by the LoRA recovery assets, too slow to run here: rows of a known outcome
# per variant, written through the declared table; the per-cluster rows are there to be left out.
RECOVERY_VALUES = {
    variant: {
        "heldout_nll": {"original": 1.0, "pruned": 3.0, **nll},
        "ppl:wikitext2": {"original": 15.0, "pruned": 40.0, **ppl},
    }
    for variant, nll, ppl in [
        (BUILT_IN, {"paser": 1.25, "random": 1.5}, {"paser": 20.04, "random": 21.5}),
        (ADDED, {"paser": 2.0, "random": 1.75}, {"paser": 30.0, "random": 28.21}),
    ]
}
RECOVERY_TOKENS = {"paser": 1000, "random": 1200}
RUN_B_CHANGES: dict[str, set[str]] = {}


@pytest.fixture(scope="module")
def data(two_variants: TwoVariants, tmp_path_factory: pytest.TempPathFactory) -> TwoVariants:
    """A copy of the two-variant database with recovery rows, and beside it run_b.duckdb, another run that
    selected two samples fewer for one variant and one more for the other."""
    folder = tmp_path_factory.mktemp("readme-sql")
    copy = TwoVariants(
        folder,
        two_variants.settings,
        two_variants.config,
        PaserDuckDB(database=str(folder / FILE_NAME)),
        two_variants.defs,
        two_variants.instance,
        two_variants.runs,
    )
    shutil.copy(two_variants.database.database, copy.database.database)
    rows = [
        {
            "variant": variant,
            "method": method,
            "metric": name,
            "value": value,
            "stderr": None,
            "recovery_ratio": (value - metrics["pruned"]) / (metrics["original"] - metrics["pruned"]),
            "train_samples": 10 if method in RECOVERY_TOKENS else None,
            "train_tokens": RECOVERY_TOKENS.get(method),
            "train_seconds": 5.0 if method in RECOVERY_TOKENS else None,
        }
        for variant in VARIANTS
        for metric, metrics in RECOVERY_VALUES[variant].items()
        for name in (metric, f"{metric}:cluster=0" if metric == "heldout_nll" else metric)
        for method, value in metrics.items()
    ]
    recovery = pd.DataFrame(rows).drop_duplicates(["variant", "method", "metric"])
    with copy.database.write() as conn:
        storage.append_rows(
            conn, "recovery_comparison", recovery.astype({"train_samples": "Int64", "train_tokens": "Int64"})
        )
    run_b = folder / "run_b.duckdb"
    shutil.copy(copy.database.database, run_b)
    with duckdb.connect(str(run_b)) as conn:
        conn.execute("SET schema = 'paser'")
        only_a = conn.execute(
            "SELECT sample_id FROM selection WHERE variant = ? AND decision = 'selected' ORDER BY sample_id LIMIT 2",
            [ADDED],
        ).fetchall()
        only_b = conn.execute(
            "SELECT sample_id FROM selection WHERE variant = ? AND decision = 'budget_full' ORDER BY sample_id LIMIT 1",
            [BUILT_IN],
        ).fetchall()
        assert len(only_a) == 2 and len(only_b) == 1
        conn.execute(
            "UPDATE selection SET decision = 'concept_conflict' WHERE variant = ? AND sample_id IN (?, ?)",
            [ADDED, *(row[0] for row in only_a)],
        )
        conn.execute(
            "UPDATE selection SET decision = 'selected' WHERE variant = ? AND sample_id = ?", [BUILT_IN, only_b[0][0]]
        )
    RUN_B_CHANGES.update(only_in_a={row[0] for row in only_a}, only_in_b={row[0] for row in only_b})
    return copy


def test_every_query_has_a_check() -> None:
    labels = [label for _, block in SQL_BLOCKS for label, sql in statements(block) if is_query(sql)]
    assert len(labels) == len(set(labels)), "two queries of the README and docs/ share a comment"
    assert sorted(labels) == sorted(CHECKS)


@pytest.mark.parametrize(("page", "block"), SQL_BLOCKS, ids=[f"{page}-{i}" for i, (page, _) in enumerate(SQL_BLOCKS)])
def test_a_sql_block_returns_per_variant_results(
    data: TwoVariants, page: str, block: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(data.root)  # where run_b.duckdb is, as for `duckdb runs.duckdb` started there
    with duckdb.connect(data.database.database, read_only=True) as conn:  # the shell's session: nothing USEd
        assert conn.execute("SELECT current_database()").fetchone()[0] == CATALOG != "paser"
        for label, statement in statements(block):
            if not is_query(statement):
                conn.execute(statement)  # SET schema, ATTACH: they must just work
                continue
            result = conn.execute(statement).df()
            assert len(result) > 0, label
            CHECKS[label](data, result)


# -- the other blocks


def test_every_block_is_of_a_checked_kind() -> None:
    for page in PAGES:
        for language, code in fenced_blocks(page.read_text(encoding="utf-8")):
            assert language in (*NOT_CODE, "sql", "bash", "python", "yaml", "toml"), (page, language, code[:80])
    assert SQL_BLOCKS and page_blocks("bash") and page_blocks("python")


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {name for line in re.findall(r"^([\w .-]+):(?!=)", text, flags=re.M) for name in line.split()}


def known_variables() -> set[str]:
    from paser_assets.resources import PaserDuckDB
    from paser_assets.settings import environment_names

    others = {"DAGSTER_HOME", "CUDA_VISIBLE_DEVICES", "LOCAL_RANK", "TORCH_INSTALL", "PYTHONPATH", "HF_HUB_OFFLINE"}
    return {*environment_names().values(), *PaserDuckDB.environment_names().values(), *others}


def check_command(words: list[str]) -> None:
    """One shell command of the pages, parsed the way its program would parse it, without running it."""
    from paser_assets.cli import build_parser

    variables = known_variables()
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # PASER_RECOVERY=1 make ui
        assert words.pop(0).split("=", 1)[0] in variables
    if not words:
        return
    program, args = words[0], words[1:]
    if program == "export":
        assert args and all(arg.split("=", 1)[0] in variables for arg in args), args
    elif program == "make":
        targets = [arg for arg in args if "=" not in arg]
        assert set(targets) <= makefile_targets(), targets
    elif program == ".venv/bin/paser":
        build_parser().parse_args(args)  # exits (SystemExit) on an unknown command or flag
    elif program == ".venv/bin/pip":
        assert args[0] == "install" and all((ROOT / arg).exists() for arg in args[1:] if not arg.startswith("-"))
    elif program in (".venv/bin/python", ".venv/bin/pytest", "python3", "bash"):
        paths = [arg for arg in args if not arg.startswith("-") and "/" in arg and not arg[0].isdigit()]
        assert paths and all((ROOT / path).exists() for path in paths), args
    elif program == ".venv/bin/dagster":
        assert args[:2] in (["dev", "-w"], ["asset", "materialize"]), args
        module = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]
        assert (args[0] == "dev" and (ROOT / args[2]).exists()) or args[args.index("-m") + 1] == module
    else:
        raise AssertionError(f"a command the test does not know how to check: {words}")


@pytest.mark.parametrize(
    ("page", "block"), page_blocks("bash"), ids=[f"{page}-{i}" for i, (page, _) in enumerate(page_blocks("bash"))]
)
def test_a_shell_block_names_real_commands_flags_and_settings(page: str, block: str) -> None:
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        check_command(words)


def test_the_python_blocks_run(data: TwoVariants, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Python block runs in a folder that holds a copy of the runs' database as paser.duckdb; the copies the
    recipes make hold the same tables."""
    shutil.copy(data.database.database, tmp_path / "paser.duckdb")
    monkeypatch.chdir(tmp_path)
    blocks = page_blocks("python")
    namespaces: dict[str, dict[str, object]] = {}
    for page, code in blocks:
        namespace = namespaces.setdefault(page, {})  # a page's blocks run one after another, as in a notebook
        exec(compile(code, page, "exec"), namespace)  # the page's block, verbatim
        if "build_definitions" in code:
            assert isinstance(namespace["defs"], dg.Definitions)
    copies = [path for path in tmp_path.glob("*.duckdb") if path.name != "paser.duckdb"]
    assert len(copies) == sum("COPY FROM DATABASE" in code for _, code in blocks) > 0
    query = "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'paser' ORDER BY ALL"
    with duckdb.connect(str(tmp_path / "paser.duckdb"), read_only=True) as conn:
        tables = conn.execute(query).fetchall()
    assert tables
    for copy in copies:
        with duckdb.connect(str(copy), read_only=True) as conn:
            assert conn.execute(query).fetchall() == tables, copy.name


def test_the_component_block_is_a_valid_component() -> None:
    from paser_assets.settings import PaserConfig, group_settings

    for page, code in page_blocks("yaml"):
        spec = yaml.safe_load(code)
        assert spec["type"] == "paser_assets.PaserComponent", page
        assert set(spec["attributes"]) <= {"database", "settings"}
        PaserConfig(**group_settings(spec["attributes"]["settings"]))


def test_the_entry_point_block_names_the_method_group() -> None:
    from paser_assets.methods import ENTRY_POINT_GROUP

    blocks = page_blocks("toml")
    assert blocks
    for page, code in blocks:
        groups = tomllib.loads(code)["project"]["entry-points"]
        assert list(groups) == [ENTRY_POINT_GROUP], page
        example = ROOT / "examples" / "shortest" / "pyproject.toml"
        if example.exists():  # the example package registers itself as the page says
            declared = tomllib.loads(example.read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
            assert groups[ENTRY_POINT_GROUP].items() <= declared.items(), (page, declared)


def test_the_readme_export_path_names_each_variants_file(two_variants: TwoVariants) -> None:
    paths = re.findall(r'data_files="([^"]+)"', README.read_text(encoding="utf-8"))
    assert paths == ["paser_export/<variant>/selection.parquet"]
    export = Path(two_variants.config.selection.export_dir)
    for variant in VARIANTS:
        path = Path(paths[0].replace("paser_export", str(export)).replace("<variant>", variant))
        assert set(pd.read_parquet(path)["sample_id"]) == selected_ids(two_variants, variant)


def test_the_query_in_the_selection_metadata_reads_that_variant_in_any_file(two_variants: TwoVariants) -> None:
    for variant in VARIANTS:
        records = two_variants.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey([variant, "selection"])), limit=1
        ).records
        query = records[0].asset_materialization.metadata["query"].value
        with duckdb.connect(two_variants.database.database, read_only=True) as conn:
            rows = conn.execute(query).df()
        assert set(rows["sample_id"]) == selected_ids(two_variants, variant)
