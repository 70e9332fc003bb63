"""The image's facts as the Dockerfile states them, for the recipe that builds without Docker.

Two recipes build mailpipe's image: the `Dockerfile` (any OCI builder with a
registry) and `scripts/build-image.sh` (mmdebstrap + umoci, no container
engine, no registry). So that they cannot drift, the script takes the
Debian release and the final stage's run-time config (USER, ENV, ENTRYPOINT,
CMD, WORKDIR, LABEL, EXPOSE) from the Dockerfile through this module, and
both install `image/debian-packages.txt` with `image/install.sh`.

Standard library only: the build script runs it with the host's python3
before any virtualenv exists (`PYTHONPATH=devstack python3 -m
mailpipe.devstack.image ...`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The files whose content decides the image: what the Dockerfile copies, the
# recipe itself and this module. A change to any of them gives a new digest,
# so a new archive; anything else (tests, chart, docs but README.md) does not.
IMAGE_INPUTS = (
    "pyproject.toml",
    "README.md",  # the wheel's long description (pyproject `readme`)
    "common",
    "operator",
    "relay",
    "image",
    "Dockerfile",
    "scripts/build-image.sh",
    "devstack/mailpipe/devstack/image.py",
)
DIGEST_CHARS = 12  # of sha256 hex: in file names and the image tag; collisions are not a concern
PACKAGE_LIST = "image/debian-packages.txt"
PYTHON_PACKAGE = re.compile(r"^python(3\.\d+)$")


class RecipeError(ValueError):
    """The Dockerfile or the package list says something this recipe cannot follow."""


@dataclass(frozen=True)
class ImageConfig:
    """The run-time config of the image, as an OCI image config holds it."""

    debian_release: str
    user: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    working_dir: str
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()

    def umoci_args(self) -> list[str]:
        """`umoci config` options that give an image exactly this config."""
        args = [f"--config.user={self.user}", f"--config.workingdir={self.working_dir}"]
        # umoci appends to (or clears, with an empty value) the list options.
        args += ["--clear=config.entrypoint"] + [
            f"--config.entrypoint={a}" for a in self.entrypoint
        ]
        args += ["--clear=config.cmd"] + [f"--config.cmd={a}" for a in self.cmd]
        args += ["--clear=config.env"] + [f"--config.env={k}={v}" for k, v in self.env.items()]
        args += [f"--config.label={k}={v}" for k, v in self.labels.items()]
        args += [f"--config.exposedports={p}" for p in self.exposed_ports]
        return args


def logical_lines(text: str) -> list[str]:
    """Instructions with their backslash continuations joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continuation
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending.strip())
    return lines


def _exec_form(value: str, instruction: str) -> tuple[str, ...]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(a, str) for a in parsed):
        # Shell form would wrap the command in /bin/sh -c, a different process tree.
        raise RecipeError(f"{instruction} must be in exec form (a JSON list): {value}")
    return tuple(parsed)


def _key_values(value: str, instruction: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for word in shlex.split(value):
        if "=" not in word:
            raise RecipeError(f"{instruction} must use the KEY=value form: {value}")
        key, _, val = word.partition("=")
        pairs[key] = val
    return pairs


def parse_dockerfile(text: str) -> ImageConfig:
    """The final stage's run-time config and the global DEBIAN_RELEASE."""
    global_args: dict[str, str] = {}
    stage: list[tuple[str, str]] = []
    seen_from = False
    for line in logical_lines(text):
        instruction, _, value = line.partition(" ")
        instruction, value = instruction.upper(), value.strip()
        if instruction == "FROM":
            seen_from, stage = True, []
        elif instruction == "ARG" and not seen_from:
            name, _, default = value.partition("=")
            global_args[name] = default
        elif seen_from:
            stage.append((instruction, value))
    if "DEBIAN_RELEASE" not in global_args:
        raise RecipeError("the Dockerfile must declare ARG DEBIAN_RELEASE=<release> before FROM")
    user, working_dir = "", ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: dict[str, str] = {}
    labels: dict[str, str] = {}
    ports: list[str] = []
    for instruction, value in stage:
        if instruction == "USER":
            user = value
        elif instruction == "WORKDIR":
            working_dir = value
        elif instruction == "ENTRYPOINT":
            entrypoint, cmd = _exec_form(value, instruction), ()  # ENTRYPOINT resets CMD
        elif instruction == "CMD":
            cmd = _exec_form(value, instruction)
        elif instruction == "ENV":
            env.update(_key_values(value, instruction))
        elif instruction == "LABEL":
            labels.update(_key_values(value, instruction))
        elif instruction == "EXPOSE":
            ports += [p if "/" in p else f"{p}/tcp" for p in value.split()]
    return ImageConfig(
        debian_release=global_args["DEBIAN_RELEASE"],
        user=user,
        entrypoint=entrypoint,
        cmd=cmd,
        working_dir=working_dir,
        env=env,
        labels=labels,
        exposed_ports=tuple(ports),
    )


def debian_packages(text: str) -> list[str]:
    """The package list's entries (comments and blank lines dropped)."""
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def python_version(packages: Sequence[str]) -> str:
    """The image's Python ("3.11"), named by its one python3.X package."""
    versions = [m.group(1) for p in packages if (m := PYTHON_PACKAGE.match(p))]
    if len(versions) != 1:
        raise RecipeError(f"{PACKAGE_LIST} must name exactly one python3.X package: {versions}")
    return versions[0]


def input_files(root: Path) -> list[str]:
    """The image's input files: tracked or new, never ignored ones (caches, .pyc)."""
    command = ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others"]
    listed = subprocess.run(
        [*command, "--exclude-standard", "--", *IMAGE_INPUTS],
        check=True,
        capture_output=True,
    ).stdout.decode()
    # ls-files --cached lists a deleted-but-not-staged file: it is no input.
    return sorted({name for name in listed.split("\0") if name and (root / name).is_file()})


def inputs_digest(root: Path, files: Sequence[str]) -> str:
    """A digest of the names, modes and contents of `files`, stable across checkouts."""
    digest = hashlib.sha256()
    for name in sorted(files):
        path = root / name
        executable = path.stat().st_mode & 0o111 != 0
        digest.update(f"{name}\0{int(executable)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:DIGEST_CHARS]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailpipe.devstack.image")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the checkout")
    parser.add_argument("what", choices=["digest", "release", "python", "umoci-args", "packages"])
    args = parser.parse_args(argv)
    root: Path = args.root
    try:
        config = parse_dockerfile((root / "Dockerfile").read_text())
        packages = debian_packages((root / PACKAGE_LIST).read_text())
        if args.what == "digest":
            print(inputs_digest(root, input_files(root)))
        elif args.what == "release":
            print(config.debian_release)
        elif args.what == "python":
            print(python_version(packages))
        elif args.what == "packages":
            print(",".join(packages))
        else:
            print("\n".join(config.umoci_args()))
    except RecipeError as exc:
        print(f"image recipe: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
