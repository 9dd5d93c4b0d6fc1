"""Answers as the handlers return them, and the two error shapes: Graph's and Entra ID's."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    #: The app the request was for, when known (for ``Logged``).
    client_id: str | None = None


def json_reply(status: int, document: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(document).encode(), headers=headers or {})


def graph_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    """Graph's ``{"error": {"code", "message", "innerError"}}``."""
    request_id = str(uuid.uuid4())
    inner = {"date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "request-id": request_id}
    document = {"error": {"code": code, "message": message, "innerError": inner}}
    return json_reply(status, document, {"request-id": request_id, **(headers or {})})


def entra_error(status: int, error: str, code: int, description: str) -> Reply:
    """The token endpoint's OAuth error: ``error``, ``error_description`` (``AADSTS{code}: …``), ``error_codes``."""
    trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    timestamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    document = {
        "error": error,
        "error_description": (
            f"AADSTS{code}: {description} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}"
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
    }
    return json_reply(status, document)
