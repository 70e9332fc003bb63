"""How many returned messages the feedback receiver decides per second on one core.

The receiver's CPU per message is `feedback.Receiver.decide`: parse the MIME
message (`email`, compat32), read the delivery-status fields, verify the
return path's token (HMAC), classify the diagnostic (the bounce rules) and
build the event and suppression. This runs it over the real-world-shaped
DSNs of the tests (Postfix, Exim, Exchange, Gmail, qmail free text) and an
ARF complaint, round-robin, pinned to one CPU, and reports messages per
CPU second (so other load on the machine slows the run, not the figure) for
the whole decision and for the DSN parser alone. No IO: the SMTP
and Kafka costs are the relay's own, measured in bench/relay.py.

    python -m bench.dsn_parse [--seconds 5]

Writes bench/results/dsn_parse.json.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from tests.inbound import samples as S

from mailpipe.contracts.bounces import default_classifier
from mailpipe.contracts.feedback_token import Purpose, TokenKeys, TokenPayload, return_path, sign
from mailpipe.inbound import dsn
from mailpipe.inbound.feedback import Kind, Receiver

from .common import write_result

KEYS = TokenKeys({"ka": b"bench-key-" * 4}, "ka")
DOMAIN = "bounce.sender.test"
TEMPLATES = (S.POSTFIX_DSN, S.EXIM_DSN, S.EXCHANGE_DSN, S.GMAIL_DSN, S.QMAIL_BOUNCE)


def rate(work: Callable[[int], object], seconds: float) -> tuple[float, int]:
    """Calls of `work(i)` per CPU second of this process over about `seconds` of
    CPU (after a short warm-up): per CPU second, not per wall second, so a
    machine busy with other work gives the same figure, only later."""
    for i in range(200):
        work(i)
    done, start = 0, time.process_time()
    deadline = start + seconds
    while True:
        for _ in range(100):
            work(done)
            done += 1
        if time.process_time() >= deadline:
            break
    return done / (time.process_time() - start), done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="CPU seconds per measurement")
    args = parser.parse_args()
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})  # one core, whatever the machine has
    now = time.time()
    payload = TokenPayload(
        "mail", "marketing", "ann@example.test", "spring-17", "spring", None, int(now)
    )
    rp = return_path(sign(payload, Purpose.BOUNCE, KEYS), DOMAIN)
    trace = sign(payload, Purpose.TRACE, KEYS)
    dsns = [S.fill(t, rp=rp, rcpt="ann@example.test", trace=trace) for t in TEMPLATES]
    arf = S.fill(S.YAHOO_ARF, rp=rp, rcpt="ann@example.test", trace=trace, fbl=f"fbl@{DOMAIN}")
    receiver = Receiver("mail", "marketing", DOMAIN, KEYS, default_classifier(), 60 * 86400)
    for data in dsns:  # the bench measures what the tests check
        assert receiver.decide(data, payload, "", now).kind is Kind.BOUNCE
    assert receiver.decide(arf, None, "", now).kind is Kind.COMPLAINT

    def decide_dsn(i: int) -> object:
        # The envelope token is verified at RCPT, per message: count it here too.
        receiver.check_token(rp[2 : rp.index("@")], Purpose.BOUNCE, now)
        return receiver.decide(dsns[i % len(dsns)], payload, "", now)

    decided, n_decided = rate(decide_dsn, args.seconds)
    parsed, n_parsed = rate(lambda i: dsn.parse(dsns[i % len(dsns)]), args.seconds)
    complaints, n_complaints = rate(lambda i: receiver.decide(arf, None, "", now), args.seconds)
    avg_bytes = sum(map(len, dsns)) / len(dsns)
    write_result(
        "dsn_parse",
        {
            "cpu": cpu,
            "dsn_decisions_per_second": round(decided),
            "dsn_parses_per_second": round(parsed),
            "arf_decisions_per_second": round(complaints),
            "messages": {"dsn_decided": n_decided, "dsn_parsed": n_parsed, "arf": n_complaints},
            "average_dsn_bytes": round(avg_bytes),
            "load_average": os.getloadavg()[0],
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
