"""A ConfigMap volume as the kubelet writes it, for tests that change a mounted file under a
running process without a node (the operator's policy file: re-read across the swap)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def write_configmap_volume(directory: Path, data: dict[str, str]) -> None:
    """Write (or update) a ConfigMap volume the way the kubelet's atomic writer does.

    The data goes to a new hidden `..<timestamp>` directory; `..data` is a
    symlink to it, replaced in one rename; each key is a symlink `key ->
    ..data/key`. A reader of `directory/key` sees the old data or the new,
    never a half-written file; the path itself never changes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    stamp.mkdir()
    for key, value in data.items():
        (stamp / key).write_text(value)
    current = directory / "..data"
    old = current.resolve() if current.is_symlink() else None
    tmp = directory / "..data_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(stamp.name)
    os.replace(tmp, current)  # the atomic swap
    for key in data:
        link = directory / key
        if not link.is_symlink():
            link.symlink_to(Path("..data") / key)
    if old is not None and old != stamp.resolve():
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
