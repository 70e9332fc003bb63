"""The `mailpipe` command: one entry point for the operator, the relay and the dev stack.

Subcommands import their implementation lazily so `mailpipe relay` never pays
for (or depends on) the operator's imports and vice versa. The production
subcommands (`operator`, `relay`) never import `mailpipe.devstack`: the image
ships without it (Dockerfile). `dev` and `demo` are offered only where the dev
stack is installed, which `importlib.util.find_spec` answers without importing it
(ARCHITECTURE.md, components).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

# subcommand -> (module, help). Each module exposes `add_arguments(parser)`
# and `run(args) -> int`.
PRODUCTION: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "operator": ("mailpipe.operator.main", "run the kopf operator"),
        "relay": ("mailpipe.relay.main", "run a relay: Kafka -> SMTP"),
        "feedback": (
            "mailpipe.inbound.feedback_server",
            "run a pool's feedback receiver: bounces and complaints -> Kafka",
        ),
        "unsubscribe": (
            "mailpipe.inbound.unsubscribe",
            "run the one-click unsubscribe endpoint (RFC 8058): POST -> suppression on Kafka",
        ),
        "submission": (
            "mailpipe.inbound.submission",
            "run the SMTP submission endpoint: applications -> Kafka",
        ),
    }
)
DEVSTACK_PACKAGE = "mailpipe.devstack"
DEVELOPMENT: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "dev": ("mailpipe.devstack.cli", "local stack of real components: up, down, status, env"),
        "demo": ("mailpipe.devstack.demo", "end-to-end demo on the local stack"),
    }
)


def devstack_installed() -> bool:
    """Whether the dev stack is importable here, asked without importing it."""
    try:
        return importlib.util.find_spec(DEVSTACK_PACKAGE) is not None
    except ModuleNotFoundError:  # a parent package is missing: not installed either
        return False


def subcommands() -> dict[str, tuple[str, str]]:
    """The subcommands this installation offers."""
    return {**PRODUCTION, **(DEVELOPMENT if devstack_installed() else {})}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the `selected` subcommand's module is imported for its options."""
    parser = argparse.ArgumentParser(prog="mailpipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in subcommands().items():
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
    if selected in DEVELOPMENT and not devstack_installed():
        print(
            f"mailpipe {selected}: the dev stack ({DEVSTACK_PACKAGE}) is not installed here; "
            "it ships with a source checkout (`make venv`), not with the image",
            file=sys.stderr,
        )
        return 2
    args = build_parser(selected).parse_args(argv)
    module = importlib.import_module(args._module)
    run: Callable[[argparse.Namespace], int] = module.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
