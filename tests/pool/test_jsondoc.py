"""The streaming JSON document reader decodes exactly what ``json.loads`` does, whatever the window size.

A window of a few characters puts a window boundary inside every kind of token (numbers, escapes,
literals, surrogate pairs), which is where a sliding-window decoder goes wrong.
"""

from __future__ import annotations

import io
import json
import random

import pytest

from paser_assets.pool import PoolInputError, jsondoc
from paser_assets.pool.rows import DEFAULT_LIMITS


def _value(rng: random.Random, depth: int = 0):
    kind = rng.choice(["int", "float", "str", "literal", "list", "dict"] if depth < 3 else ["int", "str"])
    if kind == "int":
        return rng.choice([0, -7, 12345678901234567890, rng.randint(-(10**6), 10**6)])
    if kind == "float":
        return rng.choice([1.5, -0.25e-7, 6.02e23, 3.0])
    if kind == "str":
        return rng.choice(["", "plain", 'quote " and \\ back', "tab\there\nnewline", "café ☕ 🐈", "\u2028", "]}{[,"])
    if kind == "literal":
        return rng.choice([True, False, None])
    if kind == "list":
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}": _value(rng, depth + 1) for i in range(rng.randint(0, 3))}


def items(text: str) -> list:
    return [item for _, item in jsondoc.iter_document(io.StringIO(text), "doc.json", DEFAULT_LIMITS)]


@pytest.fixture(params=[1, 7, 64, 1 << 20], ids=lambda size: f"window {size}")
def window(request, monkeypatch) -> int:
    monkeypatch.setattr(jsondoc, "_CHUNK", request.param)
    return request.param


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("indent", [None, 1])
def test_an_array_decodes_as_json_loads_does(window, seed, indent):
    rng = random.Random(seed)
    values = [_value(rng) for _ in range(300)]
    text = json.dumps(values, indent=indent, ensure_ascii=seed % 2 == 0)
    assert items(text) == json.loads(text)


def test_an_object_holding_one_array_yields_its_items(window):
    records = [{"instruction": f"t{i}", "output": "x" * i} for i in range(50)]
    text = json.dumps({"version": 3, "meta": {"nested": [1, {"deep": "]"}]}, "data": records, "name": "n"})
    assert items(text) == records


def test_a_flat_object_is_one_record(window):
    record = {"instruction": "Say hi.", "output": "Hi.", "score": 1.5, "ok": True, "id": 12345678}
    assert items(json.dumps(record)) == [record]


@pytest.mark.parametrize(
    "text",
    [
        '[\n  {"a": 1},\n  {"a": 2} {"a": 3}\n]',
        '[{"a": "unterminated}]',
        '[{"a": 1},\n\n   ]',
        '[{"a": tru}]',
        "[1, 2, 3",
        '{"data": [1, 2], "x": }',
        "[1] extra",
        '[{"a": "\\x"}]',
        '{"a" 1}',
    ],
)
def test_syntax_errors_are_located_as_json_loads_locates_them(window, text):
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(PoolInputError) as error:
        items(text)
    assert str(error.value).startswith(
        f"doc.json: not valid JSON at line {expected.value.lineno}, column {expected.value.colno}: "
    )


def test_the_window_stays_small_while_items_stream(monkeypatch):
    monkeypatch.setattr(jsondoc, "_CHUNK", 4096)
    sizes: list[int] = []
    original = jsondoc._Window.fill

    def watched(self):
        sizes.append(len(self.text))
        return original(self)

    monkeypatch.setattr(jsondoc._Window, "fill", watched)
    text = json.dumps([{"instruction": f"task {i}", "output": "y" * 100} for i in range(20_000)])
    assert len(items(text)) == 20_000
    assert len(text) > 2_000_000 and max(sizes) < 3 * 4096


def test_an_item_too_deep_to_decode_is_skipped_to_its_real_end(window):
    # Brackets and escaped quotes inside strings must not end the skipped item early.
    deep = "[" * 3000 + '"]]} \\" [[{"' + "]" * 3000
    text = '[{"a": 1}, ' + deep + ', "after \\" ]", {"b": [2]}]'
    decoded = items(text)
    assert decoded[0] == {"a": 1}
    assert isinstance(decoded[1], jsondoc.Skipped) and decoded[1].reason == "malformed_row"
    assert decoded[2:] == ['after " ]', {"b": [2]}]
