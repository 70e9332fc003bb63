"""The production CLI works without the dev stack, as it must in the image.

Each check runs a fresh interpreter in which importing `mailpipe.devstack`
fails the way it does in the image (the Dockerfile does not copy devstack/).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

WITHOUT_DEVSTACK = textwrap.dedent(
    """\
    import importlib.abc
    import sys

    class NoDevstack(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mailpipe.devstack" or name.startswith("mailpipe.devstack."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoDevstack())
    """
)
PRODUCTION_PACKAGES = ["mailpipe.cli", "mailpipe.contracts", "mailpipe.kafkakit"]
PRODUCTION_PACKAGES += ["mailpipe.relay", "mailpipe.operator"]


def run_without_devstack(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_DEVSTACK + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_production_module_imports_the_dev_stack() -> None:
    out = run_without_devstack(
        f"""
        import importlib, pkgutil
        for name in {PRODUCTION_PACKAGES!r}:
            package = importlib.import_module(name)
            for module in pkgutil.walk_packages(package.__path__, name + "."):
                if not module.name.endswith(".__main__"):  # runs the command
                    importlib.import_module(module.name)
        print("imported")
        """
    )
    assert out.returncode == 0 and "imported" in out.stdout, out.stderr


@pytest.mark.parametrize("subcommand", ["relay", "operator"])
def test_production_subcommands_run_without_the_dev_stack(subcommand: str) -> None:
    out = run_without_devstack(
        f"""
        from mailpipe.cli import main
        main([{subcommand!r}, "--help"])
        """
    )
    assert out.returncode == 0, out.stderr
    assert "usage: mailpipe " + subcommand in out.stdout


def test_dev_subcommands_are_offered_only_with_the_dev_stack() -> None:
    out = run_without_devstack(
        """
        import sys
        from mailpipe.cli import build_parser, main
        build_parser().print_help()
        sys.exit(main(["dev", "up"]))
        """
    )
    assert out.returncode == 2, out.stderr
    assert "{operator,relay,feedback,unsubscribe,submission}" in out.stdout
    assert "dev stack (mailpipe.devstack) is not installed" in out.stderr
    with_devstack = subprocess.run(
        [sys.executable, "-m", "mailpipe.cli", "--help"], capture_output=True, text=True
    )
    assert "{operator,relay,feedback,unsubscribe,submission,dev,demo}" in with_devstack.stdout, (
        with_devstack.stderr
    )
