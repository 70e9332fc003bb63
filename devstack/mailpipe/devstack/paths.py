"""Where the dev stack finds its binaries: one place that reads MAILPIPE_CACHE.

`scripts/setup-components.sh` fills the cache; everything else asks here, so
a missing component is reported once, with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mailpipe.contracts.errors import PermanentError


class ComponentMissing(PermanentError, RuntimeError):
    """A binary the stack needs is not installed; `make setup` installs it."""


def cache_dir() -> Path:
    return Path(os.environ.get("MAILPIPE_CACHE", Path.home() / ".cache" / "mailpipe"))


def binary(name: str) -> Path:
    """A component binary from the cache (etcd, kube-apiserver, helm)."""
    path = cache_dir() / "bin" / name
    if not path.exists():
        raise ComponentMissing(f"{name} not found at {path}: run `make setup`")
    return path


def system_binary(name: str, *extra_dirs: str) -> Path:
    """A binary from Debian's packages (dnsmasq, postfix tools), sbin included."""
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *extra_dirs]))
    if found is None:
        raise ComponentMissing(f"{name} not found on PATH or in {extra_dirs}: run `make setup`")
    return Path(found)


def kafka_classpath() -> str:
    path = cache_dir() / "kafka" / "classpath"
    if not path.exists():
        raise ComponentMissing(f"Kafka classpath not found at {path}: run `make setup`")
    return path.read_text().strip()


def java() -> Path:
    return system_binary("java")
