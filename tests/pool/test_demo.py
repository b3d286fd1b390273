"""The generated demo pool: deterministic, covers every family, and its reference outputs are correct."""

from __future__ import annotations

import ast
import json
import re
from collections import Counter

import pytest

from paser_assets.pool import generate_demo_pool, load_pool
from paser_assets.pool.demo import DEFAULT_DEMO_SIZE, DEMO_FAMILIES

SIZE = 160  # 20 records per family


@pytest.fixture(scope="module")
def pool() -> list[dict[str, str]]:
    return generate_demo_pool(SIZE, seed=7)


def of_family(pool: list[dict[str, str]], family: str) -> list[dict[str, str]]:
    records = [r for r in pool if r["family"] == family]
    assert records, f"no {family} record in the pool"
    return records


def test_deterministic_for_a_seed():
    assert generate_demo_pool(64, seed=3) == generate_demo_pool(64, seed=3)


def test_another_seed_gives_another_pool():
    assert generate_demo_pool(64, seed=3) != generate_demo_pool(64, seed=4)


@pytest.mark.parametrize("size", [1, 7, 8, 9, 100])
def test_requested_size(size):
    assert len(generate_demo_pool(size, seed=0)) == size


def test_default_size():
    assert len(generate_demo_pool()) == DEFAULT_DEMO_SIZE


def test_invalid_size_is_rejected():
    with pytest.raises(ValueError, match="at least 1"):
        generate_demo_pool(0)


def test_every_family_present_and_balanced(pool):
    assert len(DEMO_FAMILIES) >= 6
    counts = Counter(r["family"] for r in pool)
    assert set(counts) == set(DEMO_FAMILIES)
    assert set(counts.values()) == {SIZE // len(DEMO_FAMILIES)}


def test_records_have_the_alpaca_fields_as_non_empty_strings(pool):
    for record in pool:
        assert set(record) == {"instruction", "input", "output", "family"}
        assert all(isinstance(v, str) for v in record.values())
        assert record["instruction"].strip() and record["output"].strip()


def test_pool_is_mostly_distinct(pool):
    distinct = {(r["instruction"], r["input"], r["output"]) for r in pool}
    assert len(distinct) > 0.8 * len(pool)


def test_sorting_outputs_are_sorted(pool):
    for record in of_family(pool, "sorting"):
        values = [int(v) for v in record["input"].split(", ")]
        descending = "descending" in record["instruction"]
        assert descending or "ascending" in record["instruction"]
        assert [int(v) for v in record["output"].split(", ")] == sorted(values, reverse=descending)


def test_string_manipulation_outputs(pool):
    seen = set()
    for record in of_family(pool, "string_manipulation"):
        instruction, text, output = record["instruction"], record["input"], record["output"]
        if instruction.startswith("Reverse"):
            assert output == text[::-1]
        elif "upper case" in instruction:
            assert output == text.upper()
        elif instruction.startswith("Count the vowels"):
            count = sum(ch in "aeiou" for ch in text)
            assert output == f"The string '{text}' has {count} vowels."
        elif instruction.startswith("Sort the letters"):
            assert output == "".join(sorted(text))
        else:
            pytest.fail(f"unknown string task: {instruction}")
        seen.add(instruction.split()[0])
    assert len(seen) >= 3


_EQUATION = re.compile(r"(\d+) ([-+x/]) (\d+) = (\d+)")


def test_arithmetic_answers_are_correct(pool):
    operations = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "x": lambda a, b: a * b, "/": lambda a, b: a / b}
    for record in of_family(pool, "arithmetic"):
        match = _EQUATION.search(record["output"])
        assert match, record["output"]
        a, op, b, result = int(match[1]), match[2], int(match[3]), int(match[4])
        assert operations[op](a, b) == result
        # The operands are the numbers of the question.
        numbers = [int(n) for n in re.findall(r"\d+", record["instruction"])]
        assert {a, b} <= set(numbers)


def test_json_formatting_outputs_match_the_input(pool):
    for record in of_family(pool, "json_formatting"):
        fields = dict(part.split(": ", 1) for part in record["input"].split("; "))
        assert json.loads(record["output"]) == {
            "name": fields["name"],
            "age": int(fields["age"]),
            "city": fields["city"],
        }


_CONVERSION = re.compile(r"^(\d+) (\w+) is ([\d.]+) (\w+) \(1 (\w+) = ([\d.]+) (\w+)\)\.$")
# Exact factors, written independently of the generator's table.
_FACTORS = {
    ("kilometers", "meters"): 1000,
    ("meters", "centimeters"): 100,
    ("kilograms", "grams"): 1000,
    ("hours", "minutes"): 60,
    ("minutes", "seconds"): 60,
    ("liters", "milliliters"): 1000,
    ("inches", "centimeters"): 2.54,
    ("miles", "kilometers"): 1.609344,
    ("pounds", "kilograms"): 0.45359237,
    ("feet", "meters"): 0.3048,
}


def test_unit_conversion_outputs_are_correct(pool):
    for record in of_family(pool, "unit_conversion"):
        match = _CONVERSION.match(record["output"])
        assert match, record["output"]
        amount, source, result, target, unit_source, factor, unit_target = match.groups()
        assert (unit_source, unit_target) == (source, target)
        assert source in record["instruction"] and target in record["instruction"] and amount in record["instruction"]
        exact = _FACTORS[source, target]
        assert float(result) == pytest.approx(int(amount) * exact, abs=0.005 + 1e-9)
        assert float(factor) == pytest.approx(exact, abs=0.005 + 1e-9)


def test_code_function_outputs_run_and_do_what_they_say(pool):
    checks = {
        "sum of a list": ([3, 4, 5], 12),
        "largest number": ([3, 9, 5], 9),
        "smallest number": ([3, 9, 5], 3),
        "counts the even": ([1, 2, 4, 7], 2),
        "reverse order": ([1, 2, 3], [3, 2, 1]),
        "palindrome": ("level", True),
        "number of words": ("one two  three", 3),
        "squares every": ([1, 2, 3], [1, 4, 9]),
        "removes duplicate": ([3, 1, 3, 2, 1], [3, 1, 2]),
        "average": ([2, 4, 9], 5),
    }
    checked = 0
    for record in of_family(pool, "code_function"):
        tree = ast.parse(record["output"])
        function = tree.body[0]
        assert isinstance(function, ast.FunctionDef)
        assert function.name in record["instruction"]
        namespace: dict = {}
        exec(compile(tree, "<demo>", "exec"), namespace)
        key = next(k for k in checks if k in record["instruction"])
        argument, expected = checks[key]
        assert namespace[function.name](argument) == expected
        checked += 1
    assert checked == SIZE // len(DEMO_FAMILIES)


def test_factual_lookup_outputs_are_correct(pool):
    known = {"France": "Paris", "Japan": "Tokyo", "Canada": "Ottawa", "Australia": "Canberra", "India": "New Delhi"}
    symbols = {"gold": "Au", "iron": "Fe", "sodium": "Na", "potassium": "K", "helium": "He"}
    for record in of_family(pool, "factual_lookup"):
        if "capital" in record["instruction"]:
            country = re.search(r"of (\w+)\?|of (\w+)\.$", record["instruction"])
            name = country[1] or country[2]
            assert record["output"].startswith(f"The capital of {name} is ")
            if name in known:
                assert record["output"] == f"The capital of {name} is {known[name]}."
        else:
            element = re.search(r"(?:symbol of|symbol does) (\w+)", record["instruction"])[1]
            assert record["output"].startswith(f"The chemical symbol of {element} is ")
            if element in symbols:
                assert record["output"] == f"The chemical symbol of {element} is {symbols[element]}."


def test_factual_lookup_spot_checks():
    # Enough records that the common capitals and elements all appear.
    records = [r for r in generate_demo_pool(800, seed=1) if r["family"] == "factual_lookup"]
    outputs = {r["output"] for r in records}
    assert "The capital of France is Paris." in outputs
    assert any(o.startswith("The chemical symbol of") for o in outputs)


def test_rewriting_changes_only_the_verb_to_the_past(pool):
    irregular = {"builds": "built", "writes": "wrote", "finds": "found", "sees": "saw", "carries": "carried"}
    for record in of_family(pool, "rewriting"):
        before, after = record["input"].split(), record["output"].split()
        assert len(before) == len(after) and record["input"] != record["output"]
        changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
        assert len(changed) == 1
        present, past = changed[0]
        assert past == irregular.get(present, present[:-1] + "ed")


def test_demo_pool_loads_through_the_pool_pipeline():
    build = load_pool(None, demo_size=96, seed=5)
    assert build.rows_read == 96
    assert build.rejected.empty
    assert set(build.accepted["family"]) == set(DEMO_FAMILIES)
    assert set(build.accepted["source"]) == {"demo"}
    assert int(build.accepted["duplicate_count"].sum()) == 96
    assert load_pool(None, demo_size=96, seed=5).accepted["sample_id"].tolist() == build.accepted["sample_id"].tolist()
