"""Microsoft Graph's wire names both halves read (SPEC §9; facts and sources in GRAPH.md)."""

from __future__ import annotations

#: Graph's ``changeType`` → the row's ``event_type``.
CHANGE_TYPES = {"created": "Created", "updated": "Modified", "deleted": "Deleted"}
#: Graph's ``lifecycleEvent`` values.
LIFECYCLE_EVENTS = ("missed", "reauthorizationRequired", "subscriptionRemoved")
#: The app id of Graph's change-notification publisher: the ``appid`` (v1.0) or ``azp`` (v2.0) of its tokens.
PUBLISHER_ID = "0bf30f3b-4a52-48df-9a82-234910c4a086"
#: Microsoft's signing keys for the tokens, unless ``SYNCNOTIFY_GRAPH_JWKS_URL`` names others.
DEFAULT_JWKS_URL = "https://login.microsoftonline.com/common/discovery/v2.0/keys"
#: Longest validation token answered (decoded, bytes); a longer one gets 400 (SPEC §9).
MAX_VALIDATION_TOKEN_BYTES = 1024
