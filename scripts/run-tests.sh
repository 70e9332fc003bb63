#!/usr/bin/env bash
# Runs the whole suite. pytest's exit code 5 ("no tests ran") is a failure:
# a suite that silently collects nothing must never look green.
# --durations=25: every run (CI's too) ends with the 25 slowest tests, so a
# test that starts to cost minutes is seen the day it lands. The `cluster` tests
# (the stack's real node) are part of it.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/pytest --durations=25 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "run-tests: pytest collected no tests (exit 5) — failing" >&2
    exit 1
fi
exit "$rc"
