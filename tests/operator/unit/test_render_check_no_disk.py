"""The audience check writes nothing to disk: the operator's root filesystem is read-only.

The chart runs the operator with `readOnlyRootFilesystem: true` and mounts no
/tmp, so there is no usable temporary directory in its pod; the image test
(tests/devstack/test_image.py) runs the same check in the built image's
read-only root filesystem.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import pytest

from mailpipe.operator.render_check import check_audience

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC).timestamp()


def test_the_audience_check_needs_no_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tempfile trusts tempfile.tempdir once set: a directory that does not exist
    # fails every temporary file there, as a read-only root does in the pod.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-directory"))
    spec = {
        "poolRef": "news",
        "from": {"address": "news@example.com"},
        "subject": "Hello {{ first }}",
        "text": "Hi {{ first }}",
        "audience": {"inline": [{"address": "a@x.test", "merge": {"first": "Ann"}}]},
    }
    prepared = check_audience(spec, None, "ns/c", "u", NOW)
    assert prepared is not None
    assert [r.address for r in prepared.recipients] == ["a@x.test"]
