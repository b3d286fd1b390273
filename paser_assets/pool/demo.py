"""The offline default pool: generated instructions from eight capability families.

Every reference output is computed, not written by hand, so it is correct by construction. The
``family`` column is the ground truth that a semantic clustering should recover.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

Record = dict[str, str]
Generator = Callable[[np.random.Generator], Record]

_NAMES = ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jonas", "Kira", "Liam"]
_ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "books", "coins", "shells", "cards"]


def _arithmetic(rng: np.random.Generator) -> Record:
    name = str(rng.choice(_NAMES))
    item = str(rng.choice(_ITEMS))
    kind = int(rng.integers(4))
    a, b = int(rng.integers(3, 60)), int(rng.integers(2, 25))
    if kind == 0:
        question = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        answer = f"{name} has {a} + {b} = {a + b} {item}."
    elif kind == 1:
        a = a + b
        question = f"{name} had {a} {item} and gave away {b}. How many {item} are left?"
        answer = f"{name} has {a} - {b} = {a - b} {item} left."
    elif kind == 2:
        a = int(rng.integers(2, 13))
        question = f"{name} buys {a} boxes with {b} {item} in each box. How many {item} is that in total?"
        answer = f"In total there are {a} x {b} = {a * b} {item}."
    else:
        per = int(rng.integers(2, 12))
        total = per * b
        question = f"{name} shares {total} {item} equally among {b} friends. How many {item} does each friend get?"
        answer = f"Each friend gets {total} / {b} = {per} {item}."
    return {"instruction": question, "input": "", "output": answer}


_CONVERSIONS = [
    ("kilometers", "meters", 1000.0),
    ("meters", "centimeters", 100.0),
    ("kilograms", "grams", 1000.0),
    ("hours", "minutes", 60.0),
    ("minutes", "seconds", 60.0),
    ("liters", "milliliters", 1000.0),
    ("inches", "centimeters", 2.54),
    ("miles", "kilometers", 1.609344),
    ("pounds", "kilograms", 0.45359237),
    ("feet", "meters", 0.3048),
]


def _format_number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _unit_conversion(rng: np.random.Generator) -> Record:
    source, target, factor = _CONVERSIONS[int(rng.integers(len(_CONVERSIONS)))]
    amount = int(rng.integers(1, 250))
    templates = [
        f"Convert {amount} {source} to {target}.",
        f"How many {target} are in {amount} {source}?",
        f"Express {amount} {source} in {target}.",
    ]
    instruction = templates[int(rng.integers(len(templates)))]
    result = _format_number(amount * factor)
    return {
        "instruction": instruction,
        "input": "",
        "output": f"{amount} {source} is {result} {target} (1 {source} = {_format_number(factor)} {target}).",
    }


_WORDS = [
    "planet",
    "garden",
    "rocket",
    "silver",
    "window",
    "pencil",
    "castle",
    "bridge",
    "forest",
    "island",
    "marble",
    "orange",
    "pepper",
    "python",
    "sunset",
    "tunnel",
    "violet",
    "winter",
    "yellow",
    "zebra",
]


def _string_manipulation(rng: np.random.Generator) -> Record:
    word = str(rng.choice(_WORDS))
    other = str(rng.choice(_WORDS))
    kind = int(rng.integers(4))
    if kind == 0:
        return {"instruction": "Reverse the characters of the given string.", "input": word, "output": word[::-1]}
    if kind == 1:
        phrase = f"{word} {other}"
        return {"instruction": "Convert the given text to upper case.", "input": phrase, "output": phrase.upper()}
    if kind == 2:
        vowels = sum(ch in "aeiou" for ch in word)
        return {
            "instruction": "Count the vowels in the given string.",
            "input": word,
            "output": f"The string '{word}' has {vowels} vowels.",
        }
    return {
        "instruction": "Sort the letters of the given string alphabetically.",
        "input": word,
        "output": "".join(sorted(word)),
    }


_CODE_TASKS = [
    ("returns the sum of a list of numbers", "values", "return sum({arg})"),
    ("returns the largest number in a list", "values", "return max({arg})"),
    ("returns the smallest number in a list", "values", "return min({arg})"),
    ("counts the even numbers in a list", "values", "return sum(1 for v in {arg} if v % 2 == 0)"),
    ("returns a list in reverse order", "items", "return list(reversed({arg}))"),
    ("checks whether a string is a palindrome", "text", "return {arg} == {arg}[::-1]"),
    ("returns the number of words in a string", "text", "return len({arg}.split())"),
    ("squares every number in a list", "values", "return [v * v for v in {arg}]"),
    ("removes duplicate items from a list while keeping their order", "items", "return list(dict.fromkeys({arg}))"),
    ("returns the average of a list of numbers", "values", "return sum({arg}) / len({arg})"),
]
_FUNCTION_PREFIXES = ["compute", "get", "find", "calc", "make"]


def _code_function(rng: np.random.Generator) -> Record:
    description, arg, body = _CODE_TASKS[int(rng.integers(len(_CODE_TASKS)))]
    language = "Python"
    name = f"{rng.choice(_FUNCTION_PREFIXES)}_{description.split()[1]}"
    code = f"def {name}({arg}):\n    {body.format(arg=arg)}"
    templates = [
        f"Write a {language} function named {name} that {description}.",
        f"Implement {name}({arg}) in {language}: it {description}.",
    ]
    return {"instruction": templates[int(rng.integers(len(templates)))], "input": "", "output": code}


_CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Japan": "Tokyo",
    "Canada": "Ottawa",
    "Australia": "Canberra",
    "Brazil": "Brasilia",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Poland": "Warsaw",
    "Greece": "Athens",
    "Peru": "Lima",
    "Chile": "Santiago",
    "India": "New Delhi",
    "Thailand": "Bangkok",
    "Ireland": "Dublin",
}
_ELEMENTS = {
    "hydrogen": "H",
    "helium": "He",
    "carbon": "C",
    "nitrogen": "N",
    "oxygen": "O",
    "sodium": "Na",
    "iron": "Fe",
    "copper": "Cu",
    "silver": "Ag",
    "gold": "Au",
    "potassium": "K",
    "calcium": "Ca",
}


def _factual_lookup(rng: np.random.Generator) -> Record:
    if rng.random() < 0.6:
        country = str(rng.choice(list(_CAPITALS)))
        templates = [f"What is the capital of {country}?", f"Name the capital city of {country}."]
        return {
            "instruction": templates[int(rng.integers(2))],
            "input": "",
            "output": f"The capital of {country} is {_CAPITALS[country]}.",
        }
    element = str(rng.choice(list(_ELEMENTS)))
    templates = [
        f"What is the chemical symbol of {element}?",
        f"Which symbol does {element} have in the periodic table?",
    ]
    return {
        "instruction": templates[int(rng.integers(2))],
        "input": "",
        "output": f"The chemical symbol of {element} is {_ELEMENTS[element]}.",
    }


_SUBJECTS = ["The cat", "My neighbour", "The teacher", "Our team", "The old man", "A young girl", "The chef"]
_VERBS = [
    ("walks to", "walked to"),
    ("paints", "painted"),
    ("opens", "opened"),
    ("cleans", "cleaned"),
    ("builds", "built"),
    ("writes", "wrote"),
    ("finds", "found"),
    ("carries", "carried"),
    ("sees", "saw"),
]
_OBJECTS = ["the red door", "a small boat", "the kitchen", "a long letter", "the garden fence", "the market"]


def _rewriting(rng: np.random.Generator) -> Record:
    subject = str(rng.choice(_SUBJECTS))
    present, past = _VERBS[int(rng.integers(len(_VERBS)))]
    obj = str(rng.choice(_OBJECTS))
    templates = [
        "Rewrite the following sentence in the past tense.",
        "Change the sentence below so that it describes the past.",
    ]
    return {
        "instruction": templates[int(rng.integers(2))],
        "input": f"{subject} {present} {obj}.",
        "output": f"{subject} {past} {obj}.",
    }


def _sorting(rng: np.random.Generator) -> Record:
    values = [int(v) for v in rng.integers(-50, 100, size=int(rng.integers(4, 9)))]
    descending = bool(rng.random() < 0.5)
    order = "descending" if descending else "ascending"
    return {
        "instruction": f"Sort the following numbers in {order} order.",
        "input": ", ".join(map(str, values)),
        "output": ", ".join(map(str, sorted(values, reverse=descending))),
    }


_CITIES = ["Lyon", "Osaka", "Denver", "Porto", "Bergen", "Cusco", "Accra", "Perth"]


def _json_formatting(rng: np.random.Generator) -> Record:
    name = str(rng.choice(_NAMES))
    age = int(rng.integers(18, 80))
    city = str(rng.choice(_CITIES))
    return {
        "instruction": "Convert the record below into a JSON object with the keys name, age and city.",
        "input": f"name: {name}; age: {age}; city: {city}",
        "output": json.dumps({"name": name, "age": age, "city": city}),
    }


DEMO_FAMILIES: dict[str, Generator] = {
    "arithmetic": _arithmetic,
    "unit_conversion": _unit_conversion,
    "string_manipulation": _string_manipulation,
    "code_function": _code_function,
    "factual_lookup": _factual_lookup,
    "rewriting": _rewriting,
    "sorting": _sorting,
    "json_formatting": _json_formatting,
}

DEFAULT_DEMO_SIZE = 480


def generate_demo_pool(size: int = DEFAULT_DEMO_SIZE, seed: int = 0) -> list[dict[str, str]]:
    """``size`` records cycling through the families, each with ``instruction``, ``input``, ``output``, ``family``.

    Deterministic for a seed. Identical records can occur (the families are small template
    spaces); the pool keeps them once, as it does for any input.
    """
    if size < 1:
        raise ValueError(f"demo pool size must be at least 1, got {size}")
    rng = np.random.default_rng(seed)
    families = list(DEMO_FAMILIES.items())
    records = []
    for index in range(size):
        family, generate = families[index % len(families)]
        record = generate(rng)
        record["family"] = family
        records.append(record)
    return records
