"""What the fake sends to the receiver: the validation handshake, change notifications and lifecycle events.

Certificates are checked as httpx does with ``trust_env`` (``SSL_CERT_FILE``), so an HTTPS ingress behind a test
CA works as an ``http://`` one does.
"""

from __future__ import annotations

import logging
import uuid
from urllib.parse import quote

import httpx

from syncnotify.simulator.graph_payloads import CONTENT_TYPE, HEADERS

logger = logging.getLogger(__name__)

#: How long Graph waits for the handshake's answer (GRAPH.md §1).
HANDSHAKE_SECONDS = 10.0
POST_SECONDS = 30.0
FAILED = "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request."
MISMATCH = "Subscription validation request failed. Response must exactly match validationToken query parameter."
TIMED_OUT = "Subscription validation request timed out."


class Delivery:
    """One HTTP client, shared by the request threads (httpx's pool is thread-safe)."""

    def __init__(self) -> None:
        self.client = httpx.Client(timeout=POST_SECONDS, headers={"User-Agent": HEADERS["User-Agent"]})

    def close(self) -> None:
        self.client.close()

    def validate(self, url: str) -> str | None:
        """Do Graph's validation handshake with ``url``; ``None`` if it passed, else Graph's error message."""
        token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
        separator = "&" if "?" in url else "?"
        target = f"{url}{separator}validationToken={quote(token, safe='')}"
        try:
            answer = self.client.post(
                target, content=b"", headers={"Content-Type": "text/plain; charset=utf-8"}, timeout=HANDSHAKE_SECONDS
            )
        except httpx.TimeoutException:
            return TIMED_OUT
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            logger.info("validation of %s failed: %s", url, exc)
            return FAILED
        if answer.status_code != 200:
            return FAILED
        if answer.text != token or not answer.headers.get("content-type", "").startswith("text/plain"):
            return MISMATCH
        return None

    def post(self, url: str, body: bytes) -> int:
        """POST a notification body as Graph does; the receiver's status (raises ``httpx.HTTPError`` if none)."""
        answer = self.client.post(url, content=body, headers={"Content-Type": CONTENT_TYPE})
        return answer.status_code
