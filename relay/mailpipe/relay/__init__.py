"""Data plane: Kafka -> scheduler -> SMTP delivery -> dispositions. Owns the wire formats."""
