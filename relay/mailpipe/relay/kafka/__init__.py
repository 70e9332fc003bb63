"""The relay's Kafka adapter: with `mailpipe.kafkakit`, the only code of the
relay that imports kafka-python.

kafka-python is blocking and not thread-safe, so each client lives in a thread
of its own and meets the asyncio engine only through the `ports` protocols:

- `source`: the consumer-group member (`KafkaSource`, a `ports.RecordSource`)
  and its thread, which executes typed `commands` from the loop;
- `handoff`: records and in-band rebalance notices (`ports.Revoked`,
  `ports.Revoking`, `ports.Assigned`) from that thread to the loop, in
  order, bounded by a buffer credit;
- `metadata`: the finished-ahead offsets a commit carries to the
  partition's next owner;
- `sink`: the producer (`KafkaSink`, a `ports.RecordSink`), acks=all;
- `follower`: the topics the relay replays and follows (suppressions, events
  for the warm-up ledger, campaign states).
"""

from kafka.errors import KafkaError

from .follower import relay_followers
from .sink import KafkaSink
from .source import KafkaSource

# KafkaError re-exported so `main` can report a client failure without
# importing kafka-python itself.
__all__ = ["KafkaError", "KafkaSink", "KafkaSource", "relay_followers"]
