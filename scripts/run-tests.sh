#!/usr/bin/env bash
# Runs the whole suite. pytest's exit code 5 ("no tests ran") is a failure:
# a suite that silently collects nothing must never look green.
# The `cluster` tests (the stack's real node, issue 17) run in `make
# test-cluster` until they join the suite; a `-m` in "$@" replaces this one.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/pytest -m "not cluster" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "run-tests: pytest collected no tests (exit 5) — failing" >&2
    exit 1
fi
exit "$rc"
