"""The `mailpipe` command: one entry point for the operator, the relay and the dev stack.

Subcommands import their implementation lazily so `mailpipe relay` never pays
for (or depends on) the operator's imports and vice versa.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# subcommand -> (module, help). Each module exposes `add_arguments(parser)`
# and `run(args) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("mailpipe.operator.main", "run the kopf operator"),
    "relay": ("mailpipe.relay.main", "run a relay: Kafka -> SMTP"),
    "dev": ("mailpipe.devstack.cli", "local stack of real components: up, down, status, env"),
    "demo": ("mailpipe.devstack.demo", "end-to-end demo on the local stack"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the `selected` subcommand's module is imported for its options."""
    parser = argparse.ArgumentParser(prog="mailpipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_module=module_name)
        if name != selected:
            continue
        module = importlib.import_module(module_name)
        add_arguments: Callable[[argparse.ArgumentParser], None] = module.add_arguments
        add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected).parse_args(argv)
    module = importlib.import_module(args._module)
    run: Callable[[argparse.Namespace], int] = module.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
