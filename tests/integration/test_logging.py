"""Request logs: structured, UTC, with id and timing; never query strings, cookies or bodies."""

from __future__ import annotations

import json

import pytest
from litestar import Litestar
from litestar.testing import TestClient


def test_request_log_line_has_no_secrets(client: TestClient[Litestar], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    client.cookies.set("__Host-portal_session", "cookie-value", domain="portal.test")
    response = client.get("/?mrn=MRN-123456&token=s3cret")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("event") == "http.request"]
    assert len(requests) == 1
    entry = requests[0]
    assert entry["method"] == "GET" and entry["path"] == "/" and entry["status"] == 200
    assert entry["request_id"] == response.headers["x-request-id"]
    assert entry["timestamp"].endswith("Z")
    assert isinstance(entry["ms"], float)
    text = json.dumps(lines)
    for secret in ("MRN-123456", "s3cret", "cookie-value"):
        assert secret not in text
