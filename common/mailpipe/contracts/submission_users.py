"""The submission endpoint's users file, read by both planes.

The endpoint (`mailpipe.inbound.submission`) logs users in from it; the
operator checks the same file in the pool's users Secret before it renders the
endpoint, so a Secret the endpoint would refuse at start is a condition on the
pool (naming the user and the field) instead of a pod in a crash loop. One
parser for both, so they cannot disagree on what a good file is.

Pure: text in, users or a `UsersFileError` out. Hashing and checking passwords
stay with the endpoint (`submission_policy`); only the stored hash's format is
checked here.
"""

from __future__ import annotations

import base64
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

USERS_KEY = "users.yaml"  # the key of the users Secret the endpoint mounts
HASH_SCHEME = "scrypt"
# scrypt's memory bound (128 * N * r bytes) for a stored hash to be usable: the
# endpoint checks passwords with this `maxmem`, so a hash asking for more than
# half of it would fail at every login.
SCRYPT_MAXMEM = 64 * 1024 * 1024

Domain = Annotated[str, StringConstraints(min_length=1, pattern=r"^[A-Za-z0-9.-]+$")]


class UsersFileError(ValueError):
    """The users file cannot be used; the message says which entry and why."""


class SubmissionUser(BaseModel):
    """One application's login, from the users Secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    password_hash: str = Field(description="`mailpipe submission hash-password` output")
    sender_domains: list[Domain] = Field(
        min_length=1, description="domains allowed in MAIL FROM and the From: header"
    )
    messages_per_minute: int = Field(default=60, ge=1, description="accepted messages a minute")


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    """(N, r, p, salt, digest) of a stored `scrypt$N$r$p$salt$hash`, or None when
    it is not one the endpoint can check."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != HASH_SCHEME:
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5])
    except ValueError:
        return None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * n * r > SCRYPT_MAXMEM // 2:
        return None
    return n, r, p, salt, digest


def parse_users(text: str) -> dict[str, SubmissionUser]:
    """The users file (YAML: user name -> SubmissionUser), validated whole."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsersFileError(f"users file is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise UsersFileError("users file must map user names to their settings")
    users = {}
    for name, spec in data.items():
        try:
            user = SubmissionUser.model_validate(spec)
        except ValidationError as exc:
            msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise UsersFileError(f"user {name!r}: {msgs}") from exc
        if not parse_hash(user.password_hash):
            raise UsersFileError(
                f"user {name!r}: password_hash is not a scrypt hash; "
                "make one with `mailpipe submission hash-password`"
            )
        users[str(name)] = user
    return users
