"""Contracts shared by the control plane and the data plane.

The wire formats on Kafka, the relay configuration the operator writes and the
relay reads, and topic naming live here, once, so neither plane copies the
other's types and neither imports the other's internals. Pure: no Kafka
client, no Kubernetes client, no SMTP (see `.importlinter`).

Modules (ARCHITECTURE.md, "Components"):

- `errors`: `MailpipeError` and its `TemporaryError` / `PermanentError` branches.
- `delays`: `DelayStep` ('30s', '1m', '1h', '1d'), validated wherever it enters.
- `topics`: `Topics`, the one place a pool's topic names are built.
- `policy`: the delivery policy types the SendingPool spec and the relay config
  share (egress IP, warm-up, throttle, retry, TLS, DKIM identity, route).
- `config`: `RelayConfig`, the relay's whole configuration, and `parse_config`.
- `wire`: delivery records, events, suppressions, campaign controls on Kafka.
- `warmup`: the warm-up ledger both planes replay events into.
"""
