"""Kafka helpers shared by the operator, the relay, the tests and the benchmarks.

Administrative calls (ensure topics, read a topic to its end, end offsets)
written once, over kafka-python.
"""
