"""Contracts shared by the control plane and the data plane.

The wire formats on Kafka, the relay configuration the operator writes and the
relay reads, and topic naming live here, once, so neither plane copies the
other's types and neither imports the other's internals. Pure: no Kafka
client, no Kubernetes client, no SMTP (see `.importlinter`).
"""
