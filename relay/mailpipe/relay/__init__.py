"""Data plane: Kafka -> scheduler -> SMTP -> dispositions (see ARCHITECTURE.md, "Where to look")."""
