"""How S3 failures read in a DataUpload's status.message: one line, no debug dump."""

from __future__ import annotations

from barge.errors import TemporaryError
from barge.storage.s3 import _translate

OBSTORE_TEXT = (
    "Generic S3 error: Error performing GET http://127.0.0.1:1/b/config in 3.9s, after 8 retries, "
    "max_retries: 8, retry_timeout: 180s  - Server returned non-2xx status code: 503 Service "
    'Unavailable: <?xml version="1.0"?>\n<Error><Code>SlowDown</Code></Error>\n\nDebug source:\n'
    'Generic {\n    store: "S3",\n    source: RetryError(\n' + "        x,\n" * 200 + ")}"
)


def test_a_retried_out_failure_is_temporary_one_line_and_names_the_status() -> None:
    err = _translate(OSError(OBSTORE_TEXT), "get config")
    assert isinstance(err, TemporaryError)
    message = str(err)
    assert message.startswith("get config: object store error after retries: Generic S3 error")
    assert "503 Service Unavailable" in message
    assert "SlowDown" in message
    assert "Debug source" not in message
    assert "\n" not in message
    assert len(message) < 500
