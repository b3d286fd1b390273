"""The semantic assets through Dagster: the sentence model obeys PASER_ALLOW_PICKLE like every model."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from tiny_models import save_tiny_sentence_model

from paser_assets import PaserConfig, PaserDuckDB, build_definitions
from paser_assets.runner import run_graph


@pytest.fixture(scope="module")
def pickled_sentence_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sentence_model(tmp_path_factory.mktemp("sentence") / "pickled", safe=False)


def embed(tmp_path: Path, model: Path, **settings: object):
    database = PaserDuckDB(database=str(tmp_path / "paser.duckdb"))
    config = PaserConfig(demo_size=24, embedding_model=str(model), device="cpu", **settings)
    defs = build_definitions(config, database)
    return run_graph(defs, dg.DagsterInstance.ephemeral(), "key:recovery_pool or key:instruction_embeddings")


def test_instruction_embeddings_refuse_a_pickled_sentence_model(tmp_path: Path, pickled_sentence_model: Path) -> None:
    run = embed(tmp_path, pickled_sentence_model)
    assert not run.success
    [failure] = run.failures()
    assert failure.startswith("instruction_embeddings: PASER_EMBEDDING_MODEL=")
    assert str(pickled_sentence_model / "pytorch_model.bin") in failure and "PASER_ALLOW_PICKLE=1" in failure


def test_instruction_embeddings_load_it_with_allow_pickle(tmp_path: Path, pickled_sentence_model: Path) -> None:
    run = embed(tmp_path, pickled_sentence_model, allow_pickle=True)
    assert run.success, run.failures()
    assert "instruction_embeddings" in run.materialized
