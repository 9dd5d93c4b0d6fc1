"""App-only access tokens for one ROOMS tenant's Graph app, from a client secret or a certificate, through msal.

msal keeps the token in its in-memory cache and fetches a new one only when it is missing or near expiry
(``acquire_token_for_client`` looks in the cache first since msal 1.23), so ``token()`` is cheap to call per
request.  Secrets and tokens never appear in a message, a log line or a repr.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any
from urllib.parse import urlsplit

import msal  # type: ignore[import-untyped]  # msal ships no type hints
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from msal.exceptions import MsalServiceError  # type: ignore[import-untyped]

from shared.graph_tenants import GraphTenant
from syncnotify.graph.errors import AuthorityUnreachable, GraphAuthError

logger = logging.getLogger(__name__)

SCOPES = ["https://graph.microsoft.com/.default"]
#: Seconds msal waits for the authority (its OpenID configuration and token endpoint).
AUTHORITY_TIMEOUT = 20.0
#: Authorities msal may ask Microsoft's instance discovery about; any other one is taken as it is.
_MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoft.com",
        "login.windows.net",
        "login.microsoftonline.us",
        "login.partner.microsoftonline.cn",
        "login.chinacloudapi.cn",
    }
)
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)


def trusted_ca_file() -> str | None:
    """The CA bundle the environment names (``SSL_CERT_FILE``, else ``REQUESTS_CA_BUNDLE``); ``None``: the default.

    Read for both HTTP stacks because httpx honours only the first and requests (msal's) only the second.
    """
    return os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE") or None


class Credentials:
    """The client credentials of ``tenant``'s Graph app; ``token()`` gives a bearer token or raises ``GraphAuthError``.

    The msal application is built on first use (building it fetches the authority's OpenID configuration) and
    shared by the threads that call ``token()``.
    """

    def __init__(self, tenant: GraphTenant) -> None:
        self.tenant = tenant
        self._lock = threading.Lock()
        self._app: msal.ConfidentialClientApplication | None = None

    def __repr__(self) -> str:
        kind = "certificate" if self.tenant.client_certificate else "secret"
        return f"Credentials(tenant={self.tenant.tenant!r}, client_id={self.tenant.client_id!r}, {kind})"

    @property
    def authority(self) -> str:
        return f"{self.tenant.authority_url.rstrip('/')}/{self.tenant.directory_tenant_id}"

    def token(self) -> str:
        """A valid access token for Graph, from msal's cache when it has one."""
        with self._lock:
            app = self._application()
            try:
                result: dict[str, Any] = app.acquire_token_for_client(SCOPES)
            except (requests.RequestException, MsalServiceError) as exc:
                raise self._unreachable(exc) from None
        if "access_token" not in result:
            raise self._refused(result)
        if result.get("token_source") == "identity_provider":
            logger.info("new Graph token for tenant %s", self.tenant.tenant, extra={"tenant": self.tenant.tenant})
        return str(result["access_token"])

    def forget_token(self) -> None:
        """Drop the cached token, so that the next ``token()`` asks the authority (after Graph answered 401)."""
        with self._lock:
            if self._app is not None:
                self._app.remove_tokens_for_client()

    def _application(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            host = urlsplit(self.tenant.authority_url).hostname or ""
            ca_file = trusted_ca_file()
            try:
                self._app = msal.ConfidentialClientApplication(
                    self._client_id(),
                    client_credential=self._credential(),
                    authority=self.authority,
                    instance_discovery=host in _MICROSOFT_AUTHORITY_HOSTS,
                    verify=ca_file or True,
                    timeout=AUTHORITY_TIMEOUT,
                    app_name="syncnotify",
                )
            except (requests.RequestException, MsalServiceError) as exc:
                raise self._unreachable(exc) from None
            except ValueError as exc:
                # msal's own words: the OpenID configuration was refused (4xx), or a credential it cannot use
                if "Unable to get authority configuration" in str(exc):
                    raise self._fail(f"directory tenant {self.tenant.directory_tenant_id} not found") from None
                raise self._fail(f"msal cannot use the credentials: {_first_line(str(exc))}") from None
        return self._app

    def _client_id(self) -> str:
        if not self.tenant.directory_tenant_id:
            raise self._fail("SYNCNOTIFY_GRAPH_DIRECTORY_TENANT_ID is not set")
        if not self.tenant.client_id:
            raise self._fail("SYNCNOTIFY_GRAPH_CLIENT_ID is not set")
        return self.tenant.client_id

    def _credential(self) -> str | dict[str, str]:
        if self.tenant.client_certificate is not None:
            return self._certificate()
        if self.tenant.client_secret is not None and self.tenant.client_secret.get_secret_value():
            return self.tenant.client_secret.get_secret_value()
        raise self._fail("neither SYNCNOTIFY_GRAPH_CLIENT_SECRET nor SYNCNOTIFY_GRAPH_CLIENT_CERTIFICATE is set")

    def _certificate(self) -> dict[str, str]:
        """msal's certificate credential from the PEM file holding the private key and the certificate."""
        path = self.tenant.client_certificate
        try:
            text = path.read_text(encoding="ascii") if path else ""
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not a PEM file"
            raise self._fail(f"the client certificate {str(path)!r} cannot be read: {reason}") from None
        blocks = {match.group(1): match.group(0) for match in reversed(list(_PEM_BLOCK.finditer(text)))}
        certificate_pem = blocks.get("CERTIFICATE")
        key_pem = next((pem for kind, pem in blocks.items() if kind.endswith("PRIVATE KEY")), None)
        if certificate_pem is None or key_pem is None:
            lacking = "certificate" if certificate_pem is None else "private key"
            raise self._fail(f"the client certificate file {str(path)!r} holds no {lacking} (it needs both, PEM)")
        if "ENCRYPTED" in key_pem or "Proc-Type: 4,ENCRYPTED" in key_pem:
            raise self._fail(f"the private key in {str(path)!r} is encrypted; syncnotify needs it unencrypted")
        try:
            certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
            serialization.load_pem_private_key(key_pem.encode(), password=None)
        except ValueError:
            raise self._fail(
                f"the client certificate file {str(path)!r} is not a valid PEM certificate and key"
            ) from None
        return {
            "private_key": key_pem,
            # SHA-1 thumbprint: msal then signs its client assertion with RS256 and names the key by x5t
            "thumbprint": certificate.fingerprint(hashes.SHA1()).hex(),
            "public_certificate": certificate_pem,
        }

    def _refused(self, result: dict[str, Any]) -> GraphAuthError:
        """The error for the authority's refusal ``result`` (``error``, ``error_description``, ``error_codes``)."""
        error = str(result.get("error", "unknown_error"))
        codes = {int(code) for code in result.get("error_codes") or () if str(code).isdigit()}
        # Entra appends "Trace ID: … Correlation ID: … Timestamp: …", noise in a one-line message
        description = _first_line(str(result.get("error_description", ""))).split(" Trace ID:")[0]
        directory = self.tenant.directory_tenant_id
        if error in {"temporarily_unavailable", "server_error"}:
            return AuthorityUnreachable(
                f"tenant {self.tenant.tenant!r}: no Graph token: the authority {self.authority} is unavailable "
                f"({error}: {description})",
                code=error,
            )
        if 7000215 in codes:
            reason = "the client secret is wrong"
        elif 7000222 in codes:
            reason = "the client secret has expired"
        elif codes & {700016, 700038}:
            reason = f"the app (client id {self.tenant.client_id}) is unknown in directory tenant {directory}"
        elif codes & {90002, 900023, 90013}:
            reason = f"directory tenant {directory} not found"
        elif 7000112 in codes:
            reason = f"the app (client id {self.tenant.client_id}) is disabled in directory tenant {directory}"
        elif self.tenant.client_certificate is not None and error == "invalid_client":
            reason = f"the certificate {self.tenant.client_certificate} was refused"
        elif error == "invalid_client":
            reason = "the credentials were refused"
        else:
            reason = "the authority refused the request"
        return self._fail(f"{reason} ({error}: {description})", code=error)

    def _unreachable(self, exc: Exception) -> AuthorityUnreachable:
        """No connection, a timeout, or a 5xx/429 (msal raises ``MsalServiceError("HTTP Error: 503")`` for those)."""
        problem = "is unavailable" if isinstance(exc, MsalServiceError) else "is unreachable"
        return AuthorityUnreachable(
            f"tenant {self.tenant.tenant!r}: no Graph token: the authority {self.authority} {problem} "
            f"({type(exc).__name__}: {_first_line(str(exc))})"
        )

    def _fail(self, reason: str, code: str | None = None) -> GraphAuthError:
        return GraphAuthError(f"tenant {self.tenant.tenant!r}: no Graph token: {reason}", code=code)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
