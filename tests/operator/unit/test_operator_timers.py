"""The operator's timers are settings: production's defaults, each one set by
the operator's environment (how tests shorten a 15 s retry without waiting it
out or patching the code), and a bad value stops the operator in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mailpipe.operator.handlers.context import OperatorTimers, TimerSettingError


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, OperatorTimers(300.0, 15.0, 15.0)),
        ({"MAILPIPE_DELETE_GIVE_UP_SECONDS": "5"}, OperatorTimers(5.0, 15.0, 15.0)),
        (
            {"MAILPIPE_KAFKA_RETRY_SECONDS": "0.5", "MAILPIPE_CANCEL_RETRY_SECONDS": " 2 "},
            OperatorTimers(300.0, 0.5, 2.0),
        ),
        ({"MAILPIPE_CANCEL_RETRY_SECONDS": ""}, OperatorTimers()),
        ({"MAILPIPE_DELETE_GIVE_UP_SECONDS": "0"}, OperatorTimers(0.0, 15.0, 15.0)),
    ],
    ids=["defaults", "give-up", "retries", "empty-is-unset", "zero"],
)
def test_each_timer_is_read_from_the_environment(
    env: dict[str, str], expected: OperatorTimers
) -> None:
    assert OperatorTimers.from_env(env) == expected


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_timer_that_is_not_seconds_is_named(value: str) -> None:
    with pytest.raises(TimerSettingError, match=f"MAILPIPE_CANCEL_RETRY_SECONDS='{value}'"):
        OperatorTimers.from_env({"MAILPIPE_CANCEL_RETRY_SECONDS": value})


def test_the_operator_refuses_a_bad_timer_in_one_line_before_it_starts() -> None:
    env = {**os.environ, "MAILPIPE_KAFKA_RETRY_SECONDS": "15s", "KUBECONFIG": "/nonexistent"}
    out = subprocess.run(
        [sys.executable, "-m", "mailpipe.cli", "operator", "--namespace", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "mailpipe operator: MAILPIPE_KAFKA_RETRY_SECONDS='15s': expected a number of seconds >= 0"
    )
