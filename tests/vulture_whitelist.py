# ruff: noqa: B018, F821
"""Names vulture cannot see used, because a framework or a protocol calls them.

`tests/test_dead_code.py` runs vulture over the production packages, with the
tests, the benchmarks and this file as callers; anything else it reports is
code no caller reaches, and is removed rather than listed here. Kopf handlers
and pydantic validators are ignored by their decorators (pyproject.toml,
[tool.vulture]); `model_config` by name.
"""

# asyncio.Protocol callbacks, called by the event loop (delivery/session.py)
_.data_received
_.eof_received
_.connection_lost
_.pause_writing
_.resume_writing
# kafka-python's ConsumerRebalanceListener, called by the consumer (kafka/source.py)
_.on_partitions_revoked
_.on_partitions_lost
_.on_partitions_assigned
# aiosmtpd handler hooks, called by the SMTP server (devstack/smtp_receiver.py)
_.handle_EHLO
_.handle_MAIL
_.handle_RCPT
rcpt_options  # part of the hook's signature
# aiosmtpd's credential hook, called by its auth_PLAIN/auth_LOGIN (inbound/submission.py)
_._authenticate
mechanism
# dnspython resolver settings, read by the resolver (delivery/mx.py, devstack/dns.py)
_.nameservers
# kopf settings, read by kopf (operator/handlers/__init__.py)
_.finalizer
_.server_timeout
_.client_timeout
_.connect_timeout
_.level
_.max_workers
# kubernetes client settings, read by its urllib3 pool manager (operator/kube_io.py)
_.connection_pool_maxsize
# jinja2 sandbox policy, read by the sandbox (operator/campaign.py)
intercepted_binops
# PyYAML Dumper hook (operator/crdgen.py)
_.ignore_aliases
# enum members and spec fields that are part of the CRD schema and the wire
# format: a value users may write, not code to call
PLAIN
SCRAM_SHA_256
SCRAM_SHA_512
SKIP
MON
TUE
WED
THU
FRI
SAT
SUN
pool_ref
suspend
# __exit__'s signature (devstack/harness.py)
exc_type
tb
# the failing component's name on ComponentError, for callers that catch it (devstack/procs.py)
_.component
# persisted in the dev stack's state.json, read by whoever inspects a running stack
kube_server
_.kube_server
