"""Data plane: Kafka -> scheduler -> SMTP delivery -> dispositions (ARCHITECTURE.md, "Module map")."""
