"""Every deliberate error hangs from MailpipeError and keeps its stdlib base."""

from __future__ import annotations

import pytest

from mailpipe.contracts.config import ConfigError
from mailpipe.contracts.errors import MailpipeError, PermanentError, TemporaryError
from mailpipe.contracts.wire import WireError
from mailpipe.devstack.paths import ComponentMissing
from mailpipe.devstack.procs import ComponentFailed
from mailpipe.operator.campaign import CampaignError
from mailpipe.relay.delivery.mx import NoSuchDomain, NullMX, TemporaryDNSError
from mailpipe.relay.delivery.replies import ReplyError
from mailpipe.relay.delivery.session import ConnectionLost
from mailpipe.relay.message import MessageError

TABLE: list[tuple[type[Exception], type[MailpipeError], type[Exception]]] = [
    (WireError, PermanentError, ValueError),
    (ConfigError, PermanentError, ValueError),
    (MessageError, PermanentError, ValueError),
    (CampaignError, PermanentError, ValueError),
    (ComponentMissing, PermanentError, RuntimeError),
    (ComponentFailed, MailpipeError, RuntimeError),
    (NullMX, PermanentError, Exception),
    (NoSuchDomain, PermanentError, Exception),
    (TemporaryDNSError, TemporaryError, Exception),
    (ConnectionLost, TemporaryError, Exception),
    (ReplyError, TemporaryError, Exception),
]


@pytest.mark.parametrize(("error", "branch", "stdlib"), TABLE, ids=[t[0].__name__ for t in TABLE])
def test_error_has_its_branch_and_its_stdlib_base(
    error: type[Exception], branch: type[MailpipeError], stdlib: type[Exception]
) -> None:
    assert issubclass(error, branch) and issubclass(error, stdlib)
    assert not (issubclass(error, TemporaryError) and issubclass(error, PermanentError))


def test_the_branches_meet_at_the_root() -> None:
    assert issubclass(TemporaryError, MailpipeError) and issubclass(PermanentError, MailpipeError)
    assert not issubclass(TemporaryError, PermanentError)
