"""One settings object, read from ``SYNCNOTIFY_*`` environment variables (and ``.env``) when first needed."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.errors import ConfigError
from shared.graph import DEFAULT_JWKS_URL
from shared.graph_tenants import (
    DEFAULT_API_URL,
    DEFAULT_AUTHORITY_URL,
    DEFAULT_SUBSCRIPTION_MINUTES,
    MAX_SUBSCRIPTION_MINUTES,
    GraphTenant,
    load_tenants_file,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ENV_PREFIX = "SYNCNOTIFY_"
#: Tenants whose Graph clientState values are kept worked out (see ``Settings.graph_client_states``).
_CACHED_TENANTS = 10_000


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything an operator can set; each default is the one documented in the README."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    #: Redis holding the queue, the dead-letter queue and the unsubscribe list.
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    #: Where rows are stored; ``postgresql+psycopg://…`` in production.
    database_url: SecretStr = SecretStr("sqlite:///./syncnotify.db")
    #: Known tenants (ROOMS "Mandanten"); ``*`` accepts any.
    tenants: Annotated[list[str], NoDecode] = ["Default"]
    #: Source networks allowed to post; empty allows all.
    allowed_networks: Annotated[list[IPNetwork], NoDecode] = []
    #: Proxies whose ``X-Forwarded-For`` is believed.
    trusted_proxies: Annotated[list[IPNetwork], NoDecode] = []
    #: Networks that may read the ingress's ``/metrics`` and detailed ``/readyz`` (Prometheus, load balancers'
    #: health checks); from elsewhere ``/metrics`` is refused and ``/readyz`` says only whether it is ready.
    admin_networks: Annotated[list[IPNetwork], NoDecode] = [
        ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
    ]
    #: Largest body accepted, after gzip decoding too.
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    #: Local journal used while Redis cannot take a payload.
    spool_dir: Path = Path("./spool")
    #: How long a notification waits for its missing predecessor before the gap is recorded.
    gap_timeout_seconds: float = Field(default=60.0, gt=0)
    #: How long dead-lettered payloads are kept.
    dlq_retention_days: int = Field(default=30, gt=0)
    #: A client must deliver a whole request within this many seconds of connecting (slow-loris defence).
    request_timeout_seconds: float = Field(default=15.0, gt=0, le=600)
    #: Most payloads the ingress gathers into one queue job (posts arriving together share one Redis write),
    #: and about the most a worker stores in one transaction (taking several waiting jobs at once).
    batch_max: int = Field(default=200, gt=0, le=10_000)
    #: Attempts of a job that meets a transient failure (database or Redis away) before it is dead-lettered.
    job_retries: int = Field(default=8, ge=0, le=100)
    #: A job whose worker died (killed, machine lost) runs again after at most about this many seconds.
    abandoned_after_seconds: int = Field(default=40, ge=5, le=3600)
    #: ``text`` for people, ``json`` for log collectors (one object a line).
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Microsoft Graph (SPEC §9)
    #: The clientState secrets Graph items must carry; the first is given to new subscriptions, the others are
    #: still accepted while a secret is rotated.  Empty: the Graph endpoints answer 404.
    graph_client_state: Annotated[list[SecretStr], NoDecode] = []
    #: Where the signing keys of rich notifications' validation tokens are fetched (cached).
    graph_jwks_url: str = DEFAULT_JWKS_URL
    #: App (client) ids accepted as the tokens' audience, beside ``graph_client_id``.
    graph_app_ids: Annotated[list[str], NoDecode] = []
    #: The app registration's client id (SPEC §10); also an accepted token audience.
    graph_client_id: str | None = None
    #: ``ID=PATH`` pairs: the private key (PEM) that decrypts rich items naming ``encryptionCertificateId`` ID.
    graph_decryption_keys: Annotated[dict[str, Path], NoDecode] = {}

    # Graph subscriptions syncnotify creates and keeps alive (SPEC §10); per ROOMS tenant in the tenants file
    #: The Microsoft 365 (Entra) tenant id of the rooms.
    graph_directory_tenant_id: str | None = None
    #: The app registration's client secret, or …
    graph_client_secret: SecretStr | None = None
    #: … the path of a PEM holding its private key and certificate.
    graph_client_certificate: Path | None = None
    #: The public base URL Graph posts to (``https://rooms.example.com``).
    public_url: str | None = None
    graph_api_url: str = DEFAULT_API_URL
    graph_authority_url: str = DEFAULT_AUTHORITY_URL
    #: The lifetime asked for; Graph may grant less.
    graph_subscription_minutes: int = Field(default=DEFAULT_SUBSCRIPTION_MINUTES, ge=1, le=MAX_SUBSCRIPTION_MINUTES)
    #: TOML file with one table per ROOMS tenant overriding the Graph settings above (SPEC §10).
    graph_tenants_file: Path | None = None
    #: How often a worker looks for Graph subscriptions due for renewal.
    graph_upkeep_seconds: float = Field(default=30.0, gt=0, le=3600)

    @field_validator(
        "tenants",
        "allowed_networks",
        "trusted_proxies",
        "admin_networks",
        "graph_client_state",
        "graph_app_ids",
        mode="before",
    )
    @classmethod
    def _split(cls, value: object) -> object:
        return _comma_list(value)

    @field_validator("allowed_networks", "trusted_proxies", "admin_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, list):
            return [ipaddress.ip_network(str(v), strict=False) for v in value]
        return value

    @field_validator("graph_decryption_keys", mode="before")
    @classmethod
    def _id_paths(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        pairs = {}
        for part in (p.strip() for p in value.split(",") if p.strip()):
            name, equals, path = part.partition("=")
            if not equals or not name.strip() or not path.strip():
                raise ValueError(f"{part!r} is not ID=PATH")
            pairs[name.strip()] = path.strip()
        return pairs

    @field_validator("tenants")
    @classmethod
    def _tenants(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one tenant (or '*') is required")
        return value

    @property
    def redis(self) -> str:
        return self.redis_url.get_secret_value()

    @property
    def database(self) -> str:
        return self.database_url.get_secret_value()

    def graph_client_states(self, tenant: str) -> tuple[bytes, ...]:
        """The clientState values Graph items of ``tenant`` may carry (none: Graph is off for it).

        Asked on every Graph POST, so kept once worked out (for at most ``_CACHED_TENANTS`` tenants: with
        ``SYNCNOTIFY_TENANTS=*`` any name may come).
        """
        cache = self._client_states_by_tenant
        states = cache.get(tenant)
        if states is None:
            states = self.graph_tenant(tenant).client_states
            if len(cache) < _CACHED_TENANTS:
                cache[tenant] = states
        return states

    @cached_property
    def _client_states_by_tenant(self) -> dict[str, tuple[bytes, ...]]:
        return {}

    def graph_tenant(self, tenant: str) -> GraphTenant:
        """``tenant``'s Graph configuration: its table in the tenants file, else the environment's."""
        named = self.graph_tenants
        found = named.get(tenant) or next((t for n, t in named.items() if n.casefold() == tenant.casefold()), None)
        return found or replace(self._graph_default, tenant=tenant)

    @cached_property
    def graph_tenants(self) -> dict[str, GraphTenant]:
        """The tenants the tenants file names (read once)."""
        if self.graph_tenants_file is None:
            return {}
        return load_tenants_file(self.graph_tenants_file, self._graph_default)

    @cached_property
    def _graph_default(self) -> GraphTenant:
        return GraphTenant(
            tenant="",
            directory_tenant_id=self.graph_directory_tenant_id,
            client_id=self.graph_client_id,
            client_secret=self.graph_client_secret,
            client_certificate=self.graph_client_certificate,
            client_state=tuple(self.graph_client_state),
            public_url=self.public_url,
            api_url=self.graph_api_url,
            authority_url=self.graph_authority_url,
            subscription_minutes=self.graph_subscription_minutes,
        )

    @property
    def graph_audiences(self) -> list[str]:
        """The app ids a validation token may be issued to."""
        ids = list(self.graph_app_ids)
        for client_id in [self.graph_client_id, *(t.client_id for t in self.graph_tenants.values())]:
            if client_id and client_id not in ids:
                ids.append(client_id)
        return ids


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs, errors and ``status`` output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def load_settings() -> Settings:
    """Read the settings now; a bad value raises ``ConfigError`` naming the variable and the value."""
    try:
        settings = Settings()
        settings.graph_tenants  # noqa: B018 - read the tenants file now, so a bad one stops the start
        return settings
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        value = first.get("input")
        if "url" in field and isinstance(value, str):
            value = redact_url(value)
        reason = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{ENV_PREFIX}{field.upper()}={value!r} is not valid: {reason}") from None
    except ValueError as exc:  # e.g. an unparsable CIDR in a comma list
        raise ConfigError(f"bad setting: {exc}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once on first use (not at import time)."""
    return load_settings()
