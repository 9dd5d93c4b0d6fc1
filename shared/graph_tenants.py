"""Each ROOMS tenant's Microsoft Graph configuration (SPEC §10): the environment's, or its table of the tenants file.

The tenants file (``SYNCNOTIFY_GRAPH_TENANTS_FILE``) is TOML with one table per ROOMS tenant holding the keys
of SPEC §10's variables without the ``SYNCNOTIFY_GRAPH_`` prefix (``public_url`` without ``SYNCNOTIFY_``)::

    [Contoso]
    directory_tenant_id = "5d1c7e0a-…"
    client_id = "c4e1b7d2-…"
    client_secret = "…"            # or client_certificate = "/etc/syncnotify/contoso.pem"
    client_state = ["new-secret", "old-secret"]

A key the table leaves out is the environment's.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import SecretStr

from shared.errors import ConfigError

DEFAULT_API_URL = "https://graph.microsoft.com/v1.0"
DEFAULT_AUTHORITY_URL = "https://login.microsoftonline.com"
#: The lifetime asked for; Graph grants at most 10,080 minutes for room events (GRAPH.md §6).
DEFAULT_SUBSCRIPTION_MINUTES = 10_000
MAX_SUBSCRIPTION_MINUTES = 10_080
#: Where the ingress takes Graph's notifications and lifecycle events (SPEC §9).
NOTIFICATION_PATH = "/api/webhooks/graph"
LIFECYCLE_PATH = "/api/webhooks/graph/lifecycle"


@dataclass(frozen=True, slots=True)
class GraphTenant:
    """What syncnotify needs to receive a ROOMS tenant's Graph notifications and keep its subscriptions."""

    tenant: str
    directory_tenant_id: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = field(default=None, repr=False)
    client_certificate: Path | None = None
    client_state: tuple[SecretStr, ...] = field(default=(), repr=False)
    public_url: str | None = None
    api_url: str = DEFAULT_API_URL
    authority_url: str = DEFAULT_AUTHORITY_URL
    subscription_minutes: int = DEFAULT_SUBSCRIPTION_MINUTES

    @property
    def client_states(self) -> tuple[bytes, ...]:
        """The clientState values its items may carry; none: Graph is off for this tenant."""
        return tuple(s.get_secret_value().encode() for s in self.client_state if s.get_secret_value())

    @property
    def missing(self) -> list[str]:
        """The settings subscriptions still need, by variable name (empty: syncnotify can subscribe)."""
        needed = {
            "SYNCNOTIFY_GRAPH_DIRECTORY_TENANT_ID": self.directory_tenant_id,
            "SYNCNOTIFY_GRAPH_CLIENT_ID": self.client_id,
            "SYNCNOTIFY_GRAPH_CLIENT_SECRET or SYNCNOTIFY_GRAPH_CLIENT_CERTIFICATE": (
                self.client_secret or self.client_certificate
            ),
            "SYNCNOTIFY_GRAPH_CLIENT_STATE": self.client_state,
            "SYNCNOTIFY_PUBLIC_URL": self.public_url,
        }
        return [name for name, value in needed.items() if not value]

    def _url(self, path: str) -> str:
        if not self.public_url:
            raise ConfigError(f"SYNCNOTIFY_PUBLIC_URL is not set (tenant {self.tenant!r})")
        return f"{self.public_url.rstrip('/')}{path}?tenant={quote(self.tenant, safe='')}"

    @property
    def notification_url(self) -> str:
        return self._url(NOTIFICATION_PATH)

    @property
    def lifecycle_url(self) -> str:
        return self._url(LIFECYCLE_PATH)


_KEYS = {
    "directory_tenant_id",
    "client_id",
    "client_secret",
    "client_certificate",
    "client_state",
    "public_url",
    "api_url",
    "authority_url",
    "subscription_minutes",
}


def load_tenants_file(path: Path, default: GraphTenant) -> dict[str, GraphTenant]:
    """The file's tenants by name, each over ``default``; a bad file raises ``ConfigError`` saying where."""
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"SYNCNOTIFY_GRAPH_TENANTS_FILE={str(path)!r} cannot be read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from None
    tenants = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {name!r} must be a table ([{name}]) of Graph settings")
        tenants[name] = _tenant(path, name, table, default)
    return tenants


def _tenant(path: Path, name: str, table: Mapping[str, Any], default: GraphTenant) -> GraphTenant:
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        known = ", ".join(sorted(_KEYS))
        raise ConfigError(f"{path}: [{name}] has unknown key(s) {', '.join(unknown)}; known: {known}")
    values: dict[str, Any] = {"tenant": name}
    for key, value in table.items():
        where = f"{path}: [{name}] {key}"
        if key == "subscription_minutes":
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SUBSCRIPTION_MINUTES:
                raise ConfigError(f"{where} must be a whole number of minutes from 1 to {MAX_SUBSCRIPTION_MINUTES}")
            values[key] = value
        elif key == "client_state":
            states = [value] if isinstance(value, str) else value
            if not isinstance(states, list) or not states or not all(isinstance(s, str) and s for s in states):
                raise ConfigError(f"{where} must be a non-empty string or a list of them")
            values[key] = tuple(SecretStr(s) for s in states)
        elif not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a non-empty string")
        elif key == "client_secret":
            values[key] = SecretStr(value)
        elif key == "client_certificate":
            values[key] = Path(value)
        else:
            values[key] = value
    if "client_secret" in values and "client_certificate" not in values:
        values["client_certificate"] = None  # the table's secret, not the environment's certificate
    if "client_certificate" in values and values["client_certificate"] and "client_secret" not in values:
        values["client_secret"] = None
    return replace(default, **values)
