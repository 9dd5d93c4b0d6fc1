"""The token authority (Entra ID's v2.0 endpoints): OpenID configuration and client-credentials tokens.

Enough of Entra ID for msal's ``ConfidentialClientApplication`` with ``instance_discovery=False``: it reads the
tenant's OpenID configuration, then posts ``client_secret`` or a ``client_assertion`` (a JWT signed with the
certificate's key, naming the certificate by ``x5t`` or ``x5t#S256``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from syncnotify.fakegraph.replies import Reply, entra_error, json_reply
from syncnotify.fakegraph.state import App, Store, Token

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def openid_configuration(base_url: str, store: Store, tenant_id: str) -> Reply:
    if not store.tenant_known(tenant_id):
        return _unknown_tenant(tenant_id)
    root = f"{base_url}/{tenant_id}"
    document = {
        "token_endpoint": f"{root}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": f"{root}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{root}/v2.0",
        "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
        "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
    }
    return json_reply(200, document)


def _unknown_tenant(tenant_id: str) -> Reply:
    return entra_error(
        400,
        "invalid_request",
        90002,
        f"Tenant '{tenant_id}' not found. Check to make sure you have the correct tenant ID and are signing into "
        "the correct cloud.",
    )


class TokenEndpoint:
    """``POST /{tenant}/oauth2/v2.0/token`` with ``grant_type=client_credentials``."""

    def __init__(self, store: Store, base_url: str, token_seconds: int) -> None:
        self.store = store
        self.base_url = base_url
        self.token_seconds = token_seconds

    def scopes(self) -> set[str]:
        """Graph's scope, and the fake's own origin as resource (a client deriving it from the API URL)."""
        return {GRAPH_SCOPE, f"{self.base_url}/.default"}

    def __call__(self, tenant_id: str, form: Mapping[str, str]) -> Reply:
        refused = self._refusal(tenant_id, form)
        if refused is not None:
            return replace(refused, client_id=form.get("client_id") or None)
        client_id = form["client_id"]
        access_token = secrets.token_urlsafe(32)
        expires_at = datetime.now(UTC) + timedelta(seconds=self.token_seconds)
        with self.store.lock:
            self.store.tokens[access_token] = Token(client_id, tenant_id, expires_at)
        document = {
            "token_type": "Bearer",
            "expires_in": self.token_seconds,
            "ext_expires_in": self.token_seconds,
            "access_token": access_token,
        }
        return replace(json_reply(200, document, {"Cache-Control": "no-store"}), client_id=client_id)

    def _refusal(self, tenant_id: str, form: Mapping[str, str]) -> Reply | None:
        if not self.store.tenant_known(tenant_id):
            return _unknown_tenant(tenant_id)
        if form.get("grant_type") != "client_credentials":
            grant = form.get("grant_type")
            return entra_error(
                400, "unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant}'."
            )
        client_id = form.get("client_id", "")
        if not client_id:
            text = "The request body must contain the following parameter: 'client_id'."
            return entra_error(400, "invalid_request", 900144, text)
        app = self.store.app(client_id)
        if app is None or app.directory_tenant_id != tenant_id:
            text = f"Application with identifier '{client_id}' was not found in the directory '{tenant_id}'."
            return entra_error(400, "unauthorized_client", 700016, text)
        if not self.scopes() & set(form.get("scope", "").split()):
            text = (
                f"The provided value for scope {form.get('scope', '')!r} is not valid. Client credential flows must "
                "have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            )
            return entra_error(400, "invalid_scope", 1002012, text)
        with self.store.lock:
            revoked = client_id in self.store.revoked
        if revoked:
            return entra_error(401, "invalid_client", 7000112, f"Application '{client_id}' is disabled.")
        return self._credential_refusal(app, form)

    def _credential_refusal(self, app: App, form: Mapping[str, str]) -> Reply | None:
        if "client_secret" in form:
            if app.client_secret is not None and hmac.compare_digest(
                form["client_secret"].encode(), app.client_secret.encode()
            ):
                return None
            text = (
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
                f"value, not the client secret ID, for a secret added to app '{app.client_id}'."
            )
            return entra_error(401, "invalid_client", 7000215, text)
        if "client_assertion" in form and form.get("client_assertion_type") == ASSERTION_TYPE:
            problem = self._assertion_problem(app, form["client_assertion"])
            return None if problem is None else entra_error(401, "invalid_client", *problem)
        text = "The request body must contain the following parameter: 'client_assertion' or 'client_secret'."
        return entra_error(401, "invalid_client", 7000218, text)

    def _assertion_problem(self, app: App, assertion: str) -> tuple[int, str] | None:
        """What is wrong with a client assertion, as (AADSTS code, description); ``None``: it proves the app."""
        unregistered = (
            700027,
            "The certificate with identifier used to sign the client assertion is not registered on application.",
        )
        if app.certificate_pem is None:
            return unregistered
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.InvalidTokenError:
            return 50027, "JWT token is invalid or malformed."
        certificate = x509.load_pem_x509_certificate(app.certificate_pem)
        der = certificate.public_bytes(serialization.Encoding.DER)
        thumbprints = {
            "x5t": _b64url(hashlib.sha1(der).digest()),
            "x5t#S256": _b64url(hashlib.sha256(der).digest()),
        }
        if not any(str(header.get(key, "")).rstrip("=") == value for key, value in thumbprints.items()):
            return unregistered
        token_endpoint = f"{self.base_url}/{app.directory_tenant_id}/oauth2/v2.0/token"
        try:
            claims = jwt.decode(
                assertion,
                certificate.public_key(),  # type: ignore[arg-type]  # an RSA or EC key, as PyJWT takes
                algorithms=["RS256", "PS256"],
                audience=token_endpoint,
                issuer=app.client_id,
                options={"require": ["exp", "aud", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            return 700024, "Client assertion is not within its valid time range."
        except jwt.InvalidTokenError as exc:
            return 700027, f"Client assertion failed signature validation. ({exc})"
        if claims["sub"] != app.client_id:
            return 700021, "Client assertion application identifier doesn't match 'client_id' parameter."
        return None


def _b64url(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
