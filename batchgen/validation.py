"""JSON Schema validation that speaks the manifest's language.

jsonschema finds the errors; this module turns each one into a :class:`Problem` at the line:col of the offending
YAML node, with a message a person can act on (``"20" is not one of "3".."15"``, ``unknown key "promt" (did you
mean "prompt"?)``). It is the only module that imports jsonschema.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from batchgen.errors import Problem
from batchgen.yamlsource import Path_

Locate = Callable[[Path_, bool], Problem]
"""Makes a problem at a path of the instance (``True``: at the key itself) with an empty message."""


def make_validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for ``schema``, checked once so a broken schema file fails loudly at start."""
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schema_problems(validator: Draft202012Validator, instance: Any, locate: Locate) -> list[Problem]:
    """Every error of ``instance`` against ``validator``, as problems placed by ``locate``."""
    problems: list[Problem] = []
    errors = list(validator.iter_errors(instance))
    # One message per fault: a value outside a list of choices is not also "not text" (enum says it all).
    listed = {tuple(error.absolute_path) for error in errors if error.validator in ("enum", "const")}
    for error in errors:
        path: Path_ = tuple(error.absolute_path)
        if error.validator == "type" and path in listed:
            continue
        if error.validator == "additionalProperties" and error.validator_value is False:
            problems.extend(_unknown_keys(error, path, locate))
            continue
        problem = locate(path, False)
        problems.append(_with_message(problem, describe(error)))
    return problems


def _unknown_keys(error: ValidationError, path: Path_, locate: Locate) -> Iterable[Problem]:
    schema: Any = error.schema
    instance: Any = error.instance
    allowed = sorted(schema.get("properties", {}))
    patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
    for key in instance:
        if key in allowed or any(p.search(key) for p in patterns):
            continue
        problem = locate((*path, key), True)
        yield _with_message(problem, f'unknown key "{key}"{did_you_mean(key, allowed)}')


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean "x"?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def show(value: Any) -> str:
    """A value as it reads in a message: JSON, shortened."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(error: ValidationError) -> str:
    """A message for one jsonschema error, in our words where they are clearer than the library's."""
    custom = error.schema.get("x-message") if isinstance(error.schema, dict) else None
    if custom:
        return f"{show(error.instance)} {custom}"
    kind = error.validator
    expected: Any = error.validator_value
    value: Any = error.instance
    describers: dict[str, Callable[[], str]] = {
        "enum": lambda: f"{show(value)} is not one of {_choices(expected)}",
        "const": lambda: f"{show(value)} must be {show(expected)}",
        "type": lambda: f"{show(value)} is not {_type_name(expected)}",
        "required": lambda: re.sub(r"^'(.*)' is a required property$", r'"\1" is required (missing)', error.message),
        "minimum": lambda: f"{show(value)} is less than the minimum {expected}",
        "maximum": lambda: f"{show(value)} is more than the maximum {expected}",
        "exclusiveMinimum": lambda: f"{show(value)} must be more than {expected}",
        "minItems": lambda: f"needs at least {expected} item{'s' if expected != 1 else ''}",
        "maxItems": lambda: f"has {len(value)} items; at most {expected} are allowed",
        "minLength": lambda: "must not be empty" if expected == 1 else f"must be at least {expected} characters",
        "maxLength": lambda: f"is {len(value)} characters long; at most {expected} are allowed",
        "minProperties": lambda: "must not be empty",
    }
    describer = describers.get(str(kind))
    return describer() if describer else error.message


def _choices(values: Sequence[Any]) -> str:
    numbers = [int(v) for v in values if isinstance(v, str) and v.isdigit()]
    if len(numbers) == len(values) > 3 and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f'"{numbers[0]}".."{numbers[-1]}"'
    return ", ".join(show(v) for v in values)


_TYPE_NAMES = {
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
}


def _type_name(expected: str | list[str]) -> str:
    names = [expected] if isinstance(expected, str) else expected
    return " or ".join(_TYPE_NAMES.get(n, n) for n in names)


def _with_message(problem: Problem, message: str) -> Problem:
    return Problem(problem.file, problem.line, problem.col, problem.path, message)
