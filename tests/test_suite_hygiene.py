"""The suite stays fast and honest about time (issue 19, finding 7).

A test that sleeps a fixed second guesses the machine's speed: too short on a
loaded machine (a flaky test), too long everywhere else (a slow suite). A test
that asserts how long something took is a benchmark, and fails on a busy CI
runner for no fault of the code: timing claims live in bench/ (`make bench`).
Tests wait on a condition with a deadline instead (`tests.conftest.wait_for`).

The scan reads every test module's syntax tree, so a sleep inside a child
program's source text (a string) is not the test sleeping, and a sleep given
by a module constant is resolved to its value.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
LONGEST_SLEEP_SECONDS = 1.0  # a fixed pause this long or longer is a guess at the machine's speed
SLEEP_MODULES = ("time", "asyncio")
CLOCKS = {("time", "time"), ("time", "monotonic"), ("time", "perf_counter")}


def _constants(tree: ast.Module) -> dict[str, object]:
    """Module-level `NAME = <literal>` assignments (the usual home of a sleep's seconds)."""
    found: dict[str, object] = {}
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for target in targets:
            if isinstance(target, ast.Name) and value is not None:
                number = _number(value, found)
                if number is not None:
                    found[target.id] = number
    return found


def _number(node: ast.expr, constants: dict[str, object]) -> float | None:
    """The value of a literal, a known constant, or arithmetic on them; else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.Name):
        value = constants.get(node.id)
        return float(value) if isinstance(value, int | float) else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _number(node.operand, constants)
        return None if inner is None else -inner
    if isinstance(node, ast.BinOp):
        left, right = _number(node.left, constants), _number(node.right, constants)
        if left is None or right is None:
            return None
        ops = {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}
        if isinstance(node.op, ast.Div) and right:
            return left / right
        return ops.get(type(node.op))
    return None


def _sleep_imports(tree: ast.Module) -> set[str]:
    """Local names bound to time.sleep or asyncio.sleep (`from time import sleep`)."""
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module in SLEEP_MODULES
        for alias in node.names
        if alias.name == "sleep"
    }


def long_sleeps(source: str) -> list[tuple[int, float]]:
    """(line, seconds) of each `time.sleep(N)` / `asyncio.sleep(N)` with N >= 1 s."""
    tree = ast.parse(source)
    constants = _constants(tree)
    bare = _sleep_imports(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        is_sleep = (
            isinstance(func, ast.Attribute)
            and func.attr == "sleep"
            and isinstance(func.value, ast.Name)
            and func.value.id in SLEEP_MODULES
        ) or (isinstance(func, ast.Name) and func.id in bare)
        seconds = _number(node.args[0], constants) if is_sleep else None
        if seconds is not None and seconds >= LONGEST_SLEEP_SECONDS:
            found.append((node.lineno, seconds))
    return found


def _reads_clock(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name)
        and (n.func.value.id, n.func.attr) in CLOCKS
        for n in ast.walk(node)
    )


def duration_assertions(source: str) -> list[int]:
    """Lines of `assert` statements that compare an elapsed time (`clock() - start`).

    `assert time.monotonic() < deadline` inside a wait loop is a deadline, not a
    claim about speed, and is not reported."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assert):
            continue
        for compare in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
            sides = [compare.left, *compare.comparators]
            if any(
                isinstance(side, ast.BinOp) and isinstance(side.op, ast.Sub) and _reads_clock(side)
                for side in sides
            ):
                found.append(node.lineno)
                break
    return found


def _test_modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if p != Path(__file__).resolve())


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import time\ntime.sleep(2)\n", [(2, 2.0)]),
        ("import asyncio\nasync def f():\n    await asyncio.sleep(1.0)\n", [(3, 1.0)]),
        ("import time\nOUTAGE_SECONDS = 30\ntime.sleep(OUTAGE_SECONDS)\n", [(3, 30.0)]),
        ("from time import sleep\nsleep(5 * 2)\n", [(2, 10.0)]),
        ("import time\ntime.sleep(0.2)\n", []),
        ("import time\nPOLL = 0.05\ntime.sleep(POLL)\n", []),
        ("CHILD = 'import time; time.sleep(600)'\n", []),  # a child's program, not a sleep
    ],
    ids=["literal", "asyncio", "constant", "bare-import", "short", "short-constant", "in-string"],
)
def test_the_scan_finds_fixed_sleeps_of_a_second_or_more(
    source: str, expected: list[tuple[int, float]]
) -> None:
    assert long_sleeps(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import time\ns = time.monotonic()\nassert time.monotonic() - s < 5\n", [3]),
        ("import time\ns = time.time()\nassert 1 > time.time() - s, 'slow'\n", [3]),
        ("import time\nd = time.monotonic() + 5\nassert time.monotonic() < d\n", []),
        ("assert 3 - 1 < 5\n", []),
    ],
    ids=["monotonic", "time-on-the-right", "deadline", "no-clock"],
)
def test_the_scan_finds_assertions_on_elapsed_time(source: str, expected: list[int]) -> None:
    assert duration_assertions(source) == expected


def test_no_test_sleeps_a_fixed_second_or_more() -> None:
    found = {
        f"{path.relative_to(ROOT)}:{line}": seconds
        for path in _test_modules()
        for line, seconds in long_sleeps(path.read_text())
    }
    assert found == {}, f"wait on a condition with a deadline (tests.conftest.wait_for): {found}"


def test_no_test_asserts_a_wall_clock_duration() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _test_modules()
        for line in duration_assertions(path.read_text())
    ]
    assert found == [], f"timing claims belong in bench/ (`make bench`): {found}"


def test_every_run_of_the_suite_lists_its_slowest_tests() -> None:
    """`make test` (CI's entry point) ends with the 25 slowest tests."""
    script = (ROOT / "scripts" / "run-tests.sh").read_text()
    assert "--durations=25" in script
