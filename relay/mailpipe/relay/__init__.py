"""Data plane: Kafka -> scheduler -> SMTP -> dispositions (see ARCHITECTURE.md, "Module map")."""
