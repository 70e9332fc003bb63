"""What the chart tells the operator about every pool: relay image, pull secrets, Kafka.

A SendingPool may leave `image`, `imagePullSecrets` and `kafka.bootstrapServers`
unset; the operator fills them from its environment, which the chart sets from
its values `image.*`, `imagePullSecrets` and `kafka.bootstrapServers`
(templates/deployment.yaml). Without this, the chart's image and pull secrets
never reached the relays, and every pool had to repeat the Kafka address.

The environment is read in one place (`from_process_env`); the parsed defaults
reach the SendingPool model as pydantic validation context, so parsing a spec
stays pure and table-tested (tests/operator/unit/test_pool_defaults.py).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass

ENV_IMAGE = "MAILPIPE_RELAY_IMAGE"
ENV_PULL_SECRETS = "MAILPIPE_RELAY_IMAGE_PULL_SECRETS"  # comma-separated Secret names
ENV_KAFKA = "MAILPIPE_KAFKA_BOOTSTRAP_SERVERS"
# The image of this version, for an operator started without the chart's environment:
# the name `make image` and the chart's default give it (no registry serves it).
BUILTIN_IMAGE = "mailpipe.local/mailpipe:0.1.0"
CONTEXT_KEY = "pool_defaults"  # the validation-context key SendingPoolSpec reads


@dataclass(frozen=True)
class PoolDefaults:
    """Values a pool gets for the fields it leaves unset."""

    image: str = BUILTIN_IMAGE
    image_pull_secrets: tuple[str, ...] = ()
    kafka_bootstrap_servers: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PoolDefaults:
        secrets = tuple(s.strip() for s in env.get(ENV_PULL_SECRETS, "").split(",") if s.strip())
        return cls(
            image=env.get(ENV_IMAGE, "").strip() or BUILTIN_IMAGE,
            image_pull_secrets=secrets,
            kafka_bootstrap_servers=env.get(ENV_KAFKA, "").strip(),
        )

    def context(self) -> dict[str, PoolDefaults]:
        """The validation context for `SendingPoolSpec.model_validate`."""
        return {CONTEXT_KEY: self}


@functools.cache
def from_process_env() -> PoolDefaults:
    """This operator's defaults; its environment does not change while it runs."""
    return PoolDefaults.from_env(os.environ)
