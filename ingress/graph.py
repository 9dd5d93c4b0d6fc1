"""Microsoft Graph's webhooks at the door (SPEC §9): the handshake, the checks in order, clientState.

Like ``ingress.checks`` for EWS, this runs on the ASGI scope and the body, before FastAPI's machinery.  It
parses the JSON (the shape and each item's clientState must be known before answering) but nothing more:
which items are usable notifications is the worker's question, answered after the ``202``.
"""

from __future__ import annotations

import hmac
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope

from shared.graph import MAX_VALIDATION_TOKEN_BYTES
from shared.settings import Settings

from .checks import Headers, Rejection, allowed_tenant, headers_of, read_body


class Handshake(Exception):
    """A validation request: answer ``200`` with ``token`` as plain text, and nothing else."""

    def __init__(self, token: str, *, body_pending: bool) -> None:
        super().__init__("validation request")
        self.token = token
        self.body_pending = body_pending


@dataclass(slots=True)
class Accepted:
    """What passed the door: the items to queue, as JSON, and what was dropped on the way."""

    tenant: str
    source: str
    body: bytes  # {"value": [accepted items], "validationTokens": [...] (rich items only)}
    subscription_ids: list[str]
    changes: int = 0
    lifecycle: Counter[str] = field(default_factory=Counter)
    rejected: int = 0  # items without a matching clientState


def _validation_token(scope: Scope) -> str | None:
    """The ``validationToken`` query parameter, URL-decoded exactly once (``+``, ``%`` and spaces survive)."""
    query: bytes = scope["query_string"]
    if b"validationtoken" not in query.lower():
        return None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True, encoding="utf-8"):
        if name.lower() == "validationtoken":
            return value
    return None


def _body_expected(headers: Headers) -> bool:
    length = headers.get(b"content-length")
    return headers.get(b"transfer-encoding") is not None or (length is not None and length.strip() not in (b"", b"0"))


def _handshake(scope: Scope, headers: Headers) -> None:
    token = _validation_token(scope)
    if token is None:
        return
    if not token:
        raise Rejection(400, "validationToken is empty", body_pending=_body_expected(headers), code="bad_token")
    size = len(token.encode())
    if size > MAX_VALIDATION_TOKEN_BYTES:
        raise Rejection(
            400,
            f"validationToken of {size} bytes is longer than {MAX_VALIDATION_TOKEN_BYTES}",
            body_pending=_body_expected(headers),
            code="bad_token",
        )
    raise Handshake(token, body_pending=_body_expected(headers))


def _json_type_ok(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def _items(body: bytes) -> tuple[list[Any], Any]:
    """The ``value`` items and ``validationTokens`` of a body, or ``Rejection`` 400 saying what is wrong."""
    try:
        document = json.loads(body.decode("utf-8-sig"))  # JSON is UTF-8 on the wire (RFC 8259); bytes would guess
    except RecursionError:
        raise Rejection(400, "body is JSON nested too deeply", body_pending=False, code="not_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejection(400, f"body is not JSON: {exc}", body_pending=False, code="not_json") from None
    if not isinstance(document, dict):
        raise _shape(f"body is a JSON {_kind(document)}, not an object with a 'value' array")
    items = document.get("value")
    if not isinstance(items, list):
        found = "missing" if items is None else f"a JSON {_kind(items)}"
        raise _shape(f"'value' must be an array of notifications, is {found}")
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise _shape(f"'value' item {position} is a JSON {_kind(item)}, not an object")
    return items, document.get("validationTokens")


def _shape(reason: str) -> Rejection:
    return Rejection(400, reason, body_pending=False, code="bad_shape")


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(type(value), "null")


def _client_state_ok(item: dict[str, Any], secrets: tuple[bytes, ...]) -> bool:
    given = item.get("clientState")
    if not isinstance(given, str):
        return False
    value = given.encode()
    matched = False
    for secret in secrets:  # every secret compared, in constant time, whichever matches
        matched |= hmac.compare_digest(value, secret)
    return matched


def sort_items(items: list[Any], tokens: Any, secrets: tuple[bytes, ...], tenant: str, source: str) -> Accepted:
    """Keep the items whose clientState matches; the queued body holds them (and the tokens, for rich ones)."""
    kept: list[dict[str, Any]] = []
    accepted = Accepted(tenant, source, b"", [])
    seen: dict[str, None] = {}
    for item in items:
        if not _client_state_ok(item, secrets):
            accepted.rejected += 1
            continue
        kept.append(item)
        event = item.get("lifecycleEvent")
        if event is not None:
            accepted.lifecycle[str(event)] += 1
            continue
        accepted.changes += 1
        subscription_id = item.get("subscriptionId")
        if isinstance(subscription_id, str) and subscription_id:
            seen[subscription_id] = None
    accepted.subscription_ids = list(seen)
    if kept:
        document: dict[str, Any] = {"value": kept}
        if tokens is not None and any("encryptedContent" in item for item in kept):
            document["validationTokens"] = tokens
        accepted.body = json.dumps(document, separators=(",", ":")).encode()
    return accepted


async def check(scope: Scope, receive: Receive, settings: Settings) -> Accepted:
    """SPEC §9's checks in order; raises ``Handshake`` for a validation request, ``Rejection`` for a 4xx."""
    headers = headers_of(scope)
    tenant, source = allowed_tenant(scope, headers, settings)
    secrets = settings.graph_client_states(tenant)
    if not secrets:
        raise Rejection(404, f"Microsoft Graph notifications are not enabled for tenant {tenant!r}", code="graph_off")
    _handshake(scope, headers)
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    if not _json_type_ok(content_type):
        raise Rejection(415, f"content type {content_type or '(none)'!r} is not application/json")
    body = await read_body(receive, headers, settings.max_body_bytes)
    if not body:
        raise Rejection(400, "body is empty", body_pending=False)
    items, tokens = _items(body)
    return sort_items(items, tokens, secrets, tenant, source)
