"""A logged exception carries its traceback, never the values in its frames: a
request's params (a message body, a proxy password) are locals where it fails."""

from __future__ import annotations

import io
import json

import structlog

from wa_daemon.daemon.ops import log


def _fail_with(secret: str) -> None:
    params = {"text": secret}
    raise ValueError(f"bad params of length {len(params['text'])}")


def test_an_exception_line_has_the_traceback_but_no_locals() -> None:
    stream = io.StringIO()
    previous = log._current_writer
    log.configure("info", stream=stream, json=True)
    try:
        try:
            _fail_with("hunter2-message-body")
        except ValueError:
            log.get_logger("server").exception("handler_failed")
        line = json.loads(stream.getvalue().splitlines()[-1])
        assert line["event"] == "handler_failed"
        assert "_fail_with" in json.dumps(line["exception"])  # the frames are there
        assert "hunter2" not in stream.getvalue()  # their locals are not
    finally:  # as the other tests run: structlog's defaults
        structlog.reset_defaults()
        log._current_writer = previous
