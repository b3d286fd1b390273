"""The selection-method registry: the product's methods, plugins by entry point, and the checks on a choice."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

from paser_assets.methods import (
    DEFAULT_METHODS,
    ENTRY_POINT_GROUP,
    Candidates,
    SelectionMethod,
    choose,
    discover,
    get_method,
    registry,
)
from paser_assets.settings import PaserConfig, SettingError

PRODUCT = ("paser", "full", "random", "random_tokens", "ifd", "longest")
REPO = Path(__file__).resolve().parents[2]


def entry(name: str, value: str) -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


class NoModels:
    def tokenizer(self):
        raise AssertionError("no model may be loaded")

    pruned_model = original_model = tokenizer


def candidates(n: int = 6) -> Candidates:
    frame = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "cluster": [i % 2 for i in range(n)],
            "tokens": [10 * (i + 1) for i in range(n)],
            "response_tokens": [5 * (n - i) for i in range(n)],
        }
    )
    clusters = pd.DataFrame({"cluster": [0, 1], "cds": [0.2, 0.1], "budget": [1, 1]})
    return Candidates(frame, clusters, ("s0", "s3"), 0, 0.25, "cds", 64, NoModels())


def test_the_product_ships_its_six_methods_and_recovers_three_by_default() -> None:
    product = discover(entries=[])
    assert tuple(product) == PRODUCT
    assert {entry.source for entry in product.values()} == {"paser-assets"}
    assert DEFAULT_METHODS == ("paser", "random", "random_tokens")
    assert PaserConfig().recovery.recovery_methods == list(DEFAULT_METHODS)
    assert tuple(registry())[: len(PRODUCT)] == PRODUCT  # the installed plugins come after
    for name in PRODUCT:
        assert get_method(name).description


def test_the_wheel_holds_the_product_and_registers_no_method(tmp_path: Path) -> None:
    """What a user installs: no lab module, no example, and no entry in the methods group."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("paser_assets-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("paser_assets/methods/") for n in names)
    assert not [n for n in names if n.startswith(("paser_lab", "lab/", "examples/", "bench/", "tests/"))]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert ENTRY_POINT_GROUP not in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_a_plugin_registers_one_method_or_several_with_its_source() -> None:
    found = discover(entries=[entry("two", "sample_methods:FIRST_TWO"), entry("pair", "sample_methods:PAIR")])
    assert tuple(found) == (*PRODUCT, "plugin_a", "plugin_b", "first_two")  # sorted by entry-point name
    assert found["first_two"].source == "sample_methods:FIRST_TWO (entry point two)"
    assert found["first_two"].method.select(candidates(), 2).tolist() == ["s0", "s1"]


def test_a_broken_plugin_is_skipped_with_a_warning_that_names_it() -> None:
    broken = [entry("missing", "no_such_module:X"), entry("wrong", "sample_methods:NOT_A_METHOD")]
    with pytest.warns(UserWarning) as caught:
        found = discover(entries=broken)
    assert tuple(found) == PRODUCT
    messages = " | ".join(str(w.message) for w in caught)
    assert "entry point missing" in messages and "No module named 'no_such_module'" in messages
    assert "entry point wrong" in messages and "is not a SelectionMethod" in messages


def test_a_plugin_cannot_replace_a_product_method() -> None:
    with pytest.warns(UserWarning, match="registers the method 'random', already registered by paser-assets"):
        found = discover(entries=[entry("again", "sample_methods:RANDOM_AGAIN")])
    assert found["random"].source == "paser-assets"


@pytest.mark.parametrize("name", ["", "Random", "two words", "a-b"])
def test_a_method_name_is_a_lower_case_identifier(name: str) -> None:
    with pytest.raises(ValueError, match="lower-case letters, digits and '_'"):
        SelectionMethod(name, lambda c, b: [], "x")


def test_choose_returns_each_methods_ids_in_its_order() -> None:
    picks = choose(["paser", "random", "full", "random_tokens"], candidates(), 2, log=lambda _: None)
    assert picks["paser"] == ["s0", "s3"]
    assert len(picks["random"]) == 2 and set(picks["random"]) <= {f"s{i}" for i in range(6)}
    assert picks["full"] == [f"s{i}" for i in range(6)]
    # Random rows until PASER's 10 + 40 training tokens: the same seeded order as `random`.
    chosen = picks["random_tokens"]
    assert chosen[: min(len(chosen), 2)] == picks["random"][: min(len(chosen), 2)]


@pytest.mark.parametrize(
    ("chosen", "message"),
    [
        (["s1", "held-out"], "chose 'held-out', not a selectable sample"),
        (["s1", "s2", "s1"], "chose the sample 's1' more than once"),
        ([], "chose no sample"),
    ],
)
def test_choose_refuses_a_choice_that_breaks_the_contract(chosen: list[str], message: str, monkeypatch) -> None:
    bad = SelectionMethod("bad", lambda c, b: chosen, "x")
    monkeypatch.setitem(registry(), "bad", type(registry()["paser"])(bad, "test"))
    with pytest.raises(ValueError, match=f"method 'bad' {message}"):
        choose(["bad"], candidates(), 2, log=lambda _: None)


def test_an_unknown_method_names_the_registered_ones() -> None:
    with pytest.raises(SettingError) as caught:
        PaserConfig.from_env({"PASER_RECOVERY_METHODS": "paser,shortest_typo"})
    message = str(caught.value)
    assert "PASER_RECOVERY_METHODS" in message and "unknown recovery methods ['shortest_typo']" in message
    assert "registered: paser, full, random, random_tokens, ifd, longest" in message
    assert "`paser methods`" in message
    with pytest.raises(KeyError, match="no selection method 'nope'"):
        get_method("nope")


def test_paser_methods_lists_every_method_with_its_source() -> None:
    from paser_assets.cli import methods_listing

    listing = methods_listing()
    for name, registered in registry().items():
        assert f"{name}  [{registered.source}]" in listing
    assert "paser  [paser-assets]  (default, needs scores)" in listing
    assert "'paser_assets.methods'" in listing
