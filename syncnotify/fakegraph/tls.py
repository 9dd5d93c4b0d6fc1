"""Certificates made at run time: the fake's own CA and server certificate, and apps' client certificates.

No private key is ever kept on disk: the server's key is written to a private temporary file only for as long
as ``ssl`` needs to load it (``load_cert_chain`` reads files only).
"""

from __future__ import annotations

import ipaddress
import ssl
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The names the server certificate is valid for.
SERVER_HOSTS = ("127.0.0.1", "::1", "localhost")
VALIDITY = timedelta(days=30)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A CA of one run; ``cert_pem`` is what clients trust, the key never leaves the process."""

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    certificate: x509.Certificate

    @classmethod
    def make(cls, common_name: str = "syncnotify fake Graph test CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name(common_name)
        certificate = (
            _builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, directory: Path) -> Path:
        """Write the CA certificate (public only) as ``directory/ca.pem`` and return its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "ca.pem"
        path.write_bytes(self.cert_pem)
        return path

    def server_context(self, hosts: tuple[str, ...] = SERVER_HOSTS) -> ssl.SSLContext:
        """A server-side TLS context with a fresh certificate for ``hosts`` signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            _builder(_name(hosts[0]), self.certificate.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory(prefix="fakegraph-") as private:
            chain = Path(private) / "server.pem"
            chain.touch(mode=0o600)
            chain.write_bytes(_pem(key) + certificate.public_bytes(serialization.Encoding.PEM))
            context.load_cert_chain(chain)
        return context


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """An app's certificate credential: what msal signs with and what the app registration holds."""

    private_key_pem: bytes = field(repr=False)
    certificate_pem: bytes

    @classmethod
    def make(cls, common_name: str = "syncnotify fake Graph app") -> ClientCertificate:
        """A self-signed RSA certificate, as ``New-SelfSignedCertificate`` gives an app registration."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = _name(common_name)
        certificate = _builder(name, name, key.public_key()).sign(key, hashes.SHA256())
        return cls(_pem(key), certificate.public_bytes(serialization.Encoding.PEM))

    @property
    def sha1_thumbprint(self) -> str:
        """The hex SHA-1 thumbprint msal's ``thumbprint`` takes (the portal shows it upper case)."""
        return x509.load_pem_x509_certificate(self.certificate_pem).fingerprint(hashes.SHA1()).hex().upper()
