"""Rich Graph notifications made plain: tokens checked, resource data decrypted (SPEC §9).

``worker.graph`` parses a POST without judging its rich items; here they either gain their decrypted
``resource_data`` or become bad items, each dead-lettered with its own class.  The validation tokens vouch for
the whole POST, so they are checked once: if they fail, every rich item fails with them, while the basic items
beside them (which carry no data to trust) are stored as usual.  A POST without rich items is not touched:
Graph sends no tokens with basic notifications.  A JWKS that cannot be fetched raises ``TransientError``, and
the whole job runs again later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TypeAlias

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from shared.errors import PermanentError
from worker.decrypt import decrypt
from worker.graph_types import BadItem, Change, GraphPayload
from worker.tokens import ERROR_CLASS, TokenValidator

#: What becomes of one rich change: itself with its resource data, or the error that makes it a bad item.
_Outcome: TypeAlias = Callable[[Change], Change | PermanentError]

NO_VALIDATOR = (
    "rich notifications need SYNCNOTIFY_GRAPH_APP_IDS (or SYNCNOTIFY_GRAPH_CLIENT_ID) to check their"
    " validationTokens' audience"
)


def resolve(payload: GraphPayload, validator: TokenValidator | None, keys: Mapping[str, RSAPrivateKey]) -> GraphPayload:
    """``payload`` with each rich change decrypted, or moved to ``bad`` with why."""
    if not any(change.encrypted is not None for change in payload.changes):
        return payload
    try:
        tenants = _vouched_tenants(payload, validator)
    except PermanentError as exc:
        failure = exc  # the lambda's own name: ``exc`` is unbound after the clause
        return _split(payload, lambda _change: failure)
    return _split(payload, lambda change: _resolve_change(change, tenants, keys))


def _vouched_tenants(payload: GraphPayload, validator: TokenValidator | None) -> frozenset[str]:
    """The tenants the POST's tokens vouch for (lowercase); ``PermanentError`` if they vouch for nothing."""
    if validator is None:
        raise PermanentError(NO_VALIDATOR, ERROR_CLASS)
    return frozenset(tenant.lower() for tenant in validator.check(payload.validation_tokens))


def _resolve_change(
    change: Change, tenants: frozenset[str], keys: Mapping[str, RSAPrivateKey]
) -> Change | PermanentError:
    """The rich ``change`` with its resource data, or the error that makes it a bad item."""
    encrypted = change.encrypted
    if encrypted is None:  # a basic change: nothing to resolve
        return change
    if change.tenant_id is None or change.tenant_id.lower() not in tenants:
        return PermanentError(
            f"the item's tenantId {change.tenant_id!r} is not one its validationTokens vouch for"
            f" ({', '.join(sorted(tenants))})",
            ERROR_CLASS,
        )
    try:
        return dataclasses.replace(change, resource_data=decrypt(encrypted, keys))
    except PermanentError as exc:
        return exc


def _split(payload: GraphPayload, outcome: _Outcome) -> GraphPayload:
    """``payload`` with each rich change replaced by ``outcome``'s: a change kept, an error a bad item."""
    changes: list[Change] = []
    bad = list(payload.bad)
    for change in payload.changes:
        result = change if change.encrypted is None else outcome(change)
        if isinstance(result, PermanentError):
            where = f"item {change.index} (subscription {change.subscription_id}, event {change.item_id})"
            located = PermanentError(f"{where}: {result}", result.error_class)
            bad.append(BadItem(change.index, change.subscription_id, change.item, located))
        else:
            changes.append(result)
    bad.sort(key=lambda item: item.index)
    return dataclasses.replace(payload, changes=tuple(changes), bad=tuple(bad))
