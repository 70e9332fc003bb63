"""No module-level mutable state in the production packages (`relay/`,
`operator/`, `common/`): registries, clients, caches and counters are objects
passed in, so two relays or two operators can live in one process (a test) and
a reader sees where state comes from.

What a module may bind at its top level: constants (immutable values, named in
UPPER_CASE), loggers, type aliases and TypeVars, functions and classes. The
names are read from the source (AST), their values from the imported module,
so a `dict` behind a constant's name, a client made at import, or a `global`
statement fails here with the module and the name.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import decimal
import enum
import importlib
import logging
import pathlib
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ("common", "operator", "relay")
SCALARS = (
    type(None), bool, int, float, complex, str, bytes, range, pathlib.PurePath,
    decimal.Decimal, datetime.date, datetime.time, datetime.timedelta, datetime.tzinfo,
    enum.Enum, re.Pattern, logging.Logger, typing.TypeVar, typing.ParamSpec,
    types.FunctionType, types.BuiltinFunctionType, type,
)  # fmt: skip
CONSTANT_NAME = re.compile(r"_*[A-Z][A-Z0-9_]*")
TYPE_ALIAS_NAME = re.compile(r"_*[A-Z][A-Za-z0-9]*")
LOGGER_NAME = re.compile(r"_*(log|logger)")


def is_immutable(value: object) -> bool:
    """Whether nobody can change `value` in place (nor anything it holds)."""
    if isinstance(value, SCALARS):
        return True
    if typing.get_origin(value) is not None or isinstance(value, types.UnionType):
        return True  # a type alias: list[int], int | None, Callable[..., X]
    if isinstance(value, (tuple, frozenset)):
        return all(is_immutable(v) for v in value)
    if isinstance(value, types.MappingProxyType):
        return all(is_immutable(v) for v in value.values())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        frozen = type(value).__dataclass_params__.frozen  # type: ignore[attr-defined]
        return bool(frozen) and all(
            is_immutable(getattr(value, f.name)) for f in dataclasses.fields(value)
        )
    if isinstance(value, pydantic.BaseModel):
        return bool(value.model_config.get("frozen")) and all(
            is_immutable(v) for v in dict(value).values()
        )
    return False


def _modules() -> Iterator[tuple[str, Path]]:
    for root in SOURCE_ROOTS:
        for path in sorted((ROOT / root / "mailpipe").rglob("*.py")):
            parts = path.relative_to(ROOT / root).with_suffix("").parts
            if parts[-1] == "__main__":
                continue  # runs the command when imported
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


def _top_level_names(tree: ast.Module) -> Iterator[str]:
    """Names bound by assignments in the module body (also under if/try/with)."""
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    stack.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
            continue
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and node.value is not None:
            targets = [node.target]
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Name):
                    yield leaf.id


def problems(name: str, path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = [
        f"{name}:{node.lineno}: `global {', '.join(node.names)}`"
        for node in ast.walk(tree)
        if isinstance(node, ast.Global)
    ]
    module = importlib.import_module(name)
    for var in sorted(set(_top_level_names(tree))):
        if var.startswith("__") and var.endswith("__"):
            continue  # __all__ and the like: read by tools at import
        value = getattr(module, var)
        if LOGGER_NAME.fullmatch(var) and isinstance(value, logging.Logger):
            continue
        if is_immutable(value) and (
            CONSTANT_NAME.fullmatch(var)
            or (TYPE_ALIAS_NAME.fullmatch(var) and not isinstance(value, (str, int, float)))
        ):
            continue
        found.append(f"{name}.{var}: {type(value).__name__}")
    return found


@pytest.mark.parametrize(("name", "path"), list(_modules()), ids=[n for n, _ in _modules()])
def test_no_module_level_mutable_state(name: str, path: Path) -> None:
    assert problems(name, path) == [], (
        "module-level state: pass an object in (or make it an UPPER_CASE immutable constant)"
    )


@pytest.mark.parametrize(
    ("value", "immutable"),
    [
        ((1, "a", frozenset({b"x"})), True),
        (types.MappingProxyType({"a": (1, 2)}), True),
        (re.compile("x"), True),
        (list[int] | None, True),
        ({"a": 1}, False),
        ([1], False),
        ({1}, False),
        ((1, []), False),
        (types.MappingProxyType({"a": []}), False),
        (object(), False),
    ],
    ids=["tuple", "mappingproxy", "regex", "alias", "dict", "list", "set", "tuple-of-list",
         "proxy-of-list", "instance"],
)  # fmt: skip
def test_what_counts_as_immutable(value: object, immutable: bool) -> None:
    assert is_immutable(value) is immutable
