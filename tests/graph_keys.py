"""Microsoft's side of rich Graph notifications, made at run time for the tests (no key is ever committed).

* a trustme CA, written as a PEM file (``ca_file``): point ``SSL_CERT_FILE`` at it and urllib's default
  context (hence ``worker.tokens``'s PyJWKClient, in this process or another) trusts the JWKS server;
* an HTTPS JWKS server on 127.0.0.1 (``jwks_url``, serving ``/keys``) with one RSA signing key, counting its
  hits, able to answer errors or publish further keys;
* ``mint``: validation tokens as Graph sends them (valid by default, any claim overridable or droppable);
* ``encrypt``: an ``encryptedContent`` exactly as Graph makes it, for the RSA key whose private PEM is at
  ``key_file`` (``decryption_keys_env`` is the ``SYNCNOTIFY_GRAPH_DECRYPTION_KEYS`` value naming it).

Use: ``from tests.graph_keys import graph_keys_fixture, trusted_graph_keys_fixture  # noqa: F401`` in a test
module, then take ``graph_keys`` (or ``trusted_graph_keys``, which also sets ``SSL_CERT_FILE``) as a parameter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from shared.graph import PUBLISHER_ID
from tests.graph_samples import APP_ID, TENANT_ID

#: The ``kid`` of the JWKS server's signing key.
SIGNING_KID = "sn-test-signing-1"
#: The ``encryptionCertificateId`` the tests' subscriptions would name.
CERTIFICATE_ID = "sn-test-encryption-1"


def new_rsa_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit RSA key (Graph's minimum; smaller ones make PyJWT warn)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    """The JWK of ``key``'s public half, as Microsoft's JWKS lists it (``kty``, ``use``, ``kid``, ``n``, ``e``)."""
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "use": "sig", "kid": kid}


def claims_for(version: str = "1.0", tenant: str = TENANT_ID, *, now: float | None = None) -> dict[str, Any]:
    """Valid claims of a Graph validation token of ``version`` (``1.0`` or ``2.0``) for ``tenant``."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "aud": APP_ID,
        "iat": issued,
        "nbf": issued,
        "exp": issued + 3600,
        "tid": tenant,
        "ver": version,
        "oid": "9f4b2e61-0c7a-4d38-b5e2-71a9c3d0f846",
        "sub": "9f4b2e61-0c7a-4d38-b5e2-71a9c3d0f846",
    }
    if version == "2.0":
        claims.update(iss=f"https://login.microsoftonline.com/{tenant}/v2.0", azp=PUBLISHER_ID, azpacr="2")
    else:
        claims.update(iss=f"https://sts.windows.net/{tenant}/", appid=PUBLISHER_ID, appidacr="2")
    return claims


def mint_token(
    claims: Mapping[str, Any], key: rsa.RSAPrivateKey | None, kid: str | None, algorithm: str = "RS256"
) -> str:
    """A JWT of ``claims`` signed by ``key`` (``algorithm`` ``none``: unsigned; ``HS256``: a shared secret)."""
    headers = {} if kid is None else {"kid": kid}
    if algorithm == "none":
        return jwt.encode(dict(claims), "", algorithm="none", headers=headers)
    if algorithm.startswith("HS"):
        return jwt.encode(dict(claims), "s" * 64, algorithm=algorithm, headers=headers)
    assert key is not None, f"{algorithm} needs a key"
    return jwt.encode(dict(claims), key, algorithm=algorithm, headers=headers)


def encrypt_content(
    resource_json: str, certificate_id: str, public_key: rsa.RSAPublicKey, thumbprint: str | None = None
) -> dict[str, Any]:
    """An ``encryptedContent`` as Graph makes it (GRAPH.md §5.3 run forwards): a fresh AES-256 key, the JSON
    AES-256-CBC encrypted (IV = the key's first 16 bytes, PKCS7), HMAC-SHA256 of the ciphertext, the key
    wrapped with RSA-OAEP (SHA-1, MGF1-SHA-1)."""
    key = os.urandom(32)
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    padded = padder.update(resource_json.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    wrapped = public_key.encrypt(key, OAEP(mgf=MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
    content = {
        "data": b64(ciphertext),
        "dataSignature": b64(hmac.new(key, ciphertext, hashlib.sha256).digest()),
        "dataKey": b64(wrapped),
        "encryptionCertificateId": certificate_id,
    }
    if thumbprint is not None:
        content["encryptionCertificateThumbprint"] = thumbprint
    return content


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def self_signed(key: rsa.RSAPrivateKey, name: str) -> x509.Certificate:
    """A self-signed certificate of ``key`` (Graph only uses its public key), as a subscription uploads."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def write_private_key(key: rsa.RSAPrivateKey, path: Path) -> Path:
    """``key`` as an unencrypted PKCS#8 PEM file only its owner can read."""
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


def unused_url() -> str:
    """An HTTPS URL on 127.0.0.1 where nothing listens (a JWKS endpoint that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"https://127.0.0.1:{port}/keys"


class JwksServer(ThreadingHTTPServer):
    """Serves ``/keys`` over HTTPS; counts the fetches; ``failing``/``publishing`` change it for a while."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext, keys: list[dict[str, Any]]) -> None:
        super().__init__(("127.0.0.1", 0), _JwksHandler)
        # The handshake happens in the handler's thread, so a client that fails it cannot stall the server.
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.keys = list(keys)
        self.status = 200
        self.hits = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}/keys"

    def answer(self) -> tuple[int, bytes]:
        """The status and body of the next ``/keys`` request, counted."""
        with self.lock:
            self.hits += 1
            if self.status != 200:
                return self.status, b'{"error": "unavailable"}'
            return 200, json.dumps({"keys": self.keys}).encode()

    @contextmanager
    def failing(self, status: int = 503) -> Iterator[None]:
        """Answer ``status`` to every request for the duration."""
        self.status = status
        try:
            yield
        finally:
            self.status = 200

    @contextmanager
    def publishing(self, jwk: dict[str, Any]) -> Iterator[None]:
        """List ``jwk`` beside the signing key for the duration (a key rotation)."""
        with self.lock:
            self.keys.append(jwk)
        try:
            yield
        finally:
            with self.lock:
                self.keys.remove(jwk)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: the tests provoke failed handshakes on purpose."""


class _JwksHandler(BaseHTTPRequestHandler):
    server: JwksServer

    def do_GET(self) -> None:
        if self.path != "/keys":
            self.send_error(404)
            return
        status, body = self.server.answer()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no access log on the tests' stderr."""


@dataclass(frozen=True)
class GraphKeys:
    """Microsoft's keys and endpoint for one test session (see the module docstring)."""

    ca_file: Path
    server: JwksServer
    signing_key: rsa.RSAPrivateKey
    signing_kid: str
    #: A key the JWKS does not list: tokens it signs must fail.
    stranger_key: rsa.RSAPrivateKey
    encryption_key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    certificate_id: str
    key_file: Path

    @property
    def jwks_url(self) -> str:
        return self.server.url

    @property
    def thumbprint(self) -> str:
        """The certificate's SHA-1 thumbprint in hex, as Graph sends it."""
        return self.certificate.fingerprint(hashes.SHA1()).hex().upper()

    @property
    def decryption_keys_env(self) -> str:
        """The ``SYNCNOTIFY_GRAPH_DECRYPTION_KEYS`` value that names ``key_file``."""
        return f"{self.certificate_id}={self.key_file}"

    def mint(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        version: str = "1.0",
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = SIGNING_KID,
        algorithm: str = "RS256",
    ) -> str:
        """A validation token: valid ``version`` claims for the samples' app and tenant, then ``overrides``
        (a value of ``None`` drops that claim); signed by the JWKS's key unless ``key`` says otherwise."""
        claims = claims_for(version, (overrides or {}).get("tid") or TENANT_ID)
        for name, value in (overrides or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return mint_token(claims, key or self.signing_key, kid, algorithm)

    def encrypt(self, resource_json: str, certificate_id: str | None = None) -> dict[str, Any]:
        """``resource_json`` as Graph's ``encryptedContent`` for the encryption key (named ``certificate_id``)."""
        return encrypt_content(
            resource_json, certificate_id or self.certificate_id, self.encryption_key.public_key(), self.thumbprint
        )


@pytest.fixture(scope="session", name="graph_keys")
def graph_keys_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GraphKeys]:
    """The session's CA, JWKS server and keys; the server runs until the session ends."""
    folder = tmp_path_factory.mktemp("graph-keys")
    ca = trustme.CA()
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    signing_key = new_rsa_key()
    server = JwksServer(context, [public_jwk(signing_key, SIGNING_KID)])
    thread = threading.Thread(target=server.serve_forever, name="jwks-server", daemon=True)
    thread.start()
    encryption_key = new_rsa_key()
    try:
        yield GraphKeys(
            ca_file=ca_file,
            server=server,
            signing_key=signing_key,
            signing_kid=SIGNING_KID,
            stranger_key=new_rsa_key(),
            encryption_key=encryption_key,
            certificate=self_signed(encryption_key, "syncnotify test encryption"),
            certificate_id=CERTIFICATE_ID,
            key_file=write_private_key(encryption_key, folder / "encryption.pem"),
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(name="trusted_graph_keys")
def trusted_graph_keys_fixture(graph_keys: GraphKeys, monkeypatch: pytest.MonkeyPatch) -> GraphKeys:
    """``graph_keys`` with ``SSL_CERT_FILE`` naming its CA for the test, so urllib trusts the JWKS server."""
    monkeypatch.setenv("SSL_CERT_FILE", str(graph_keys.ca_file))
    return graph_keys


#: The fixtures under their own names too, for a module importing ``graph_keys`` itself; a module that takes
#: them as parameters imports ``graph_keys_fixture`` instead, so that ruff's F811 has nothing to say.
graph_keys = graph_keys_fixture
trusted_graph_keys = trusted_graph_keys_fixture
