"""The ``encryptedContent`` of rich Graph notifications, decrypted exactly as GRAPH.md §5.3 says.

Graph makes a fresh AES-256 key per item, encrypts the resource JSON with it (CBC, PKCS7, IV = the key's first
16 bytes), signs the ciphertext with HMAC-SHA256 under the same key, and wraps the key with the
subscription certificate's public key (RSA-OAEP, SHA-1, MGF1-SHA-1).  We reverse it with the private key the
item's ``encryptionCertificateId`` names in ``SYNCNOTIFY_GRAPH_DECRYPTION_KEYS``.  The signature is checked
before anything is decrypted: a tampered item must not reach the AES code (nor tell anyone about padding).

Each failure is the item's own dead letter, with a class an operator can act on: ``no_decryption_key``
(configure the key, then replay), ``bad_signature`` (tampered or corrupt), ``undecryptable`` (wrong key,
bad base64, bad padding, not UTF-8).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from shared.errors import ConfigError, PermanentError
from worker.graph_types import EncryptedContent

#: The setting the keys come from, named in errors.
SETTING = "SYNCNOTIFY_GRAPH_DECRYPTION_KEYS"
#: Bytes of the AES-256 key Graph wraps in ``dataKey``.
KEY_BYTES = 32
#: Bytes of the IV, taken from the key's start.
IV_BYTES = 16


def load_keys(spec: Mapping[str, Path]) -> dict[str, rsa.RSAPrivateKey]:
    """The RSA private keys of ``spec`` (certificate id → unencrypted PEM file); ``ConfigError`` naming a bad one."""
    return {certificate_id: _load_key(certificate_id, Path(path)) for certificate_id, path in spec.items()}


def _load_key(certificate_id: str, path: Path) -> rsa.RSAPrivateKey:
    where = f"{SETTING}: the key of certificate id {certificate_id!r} at {path}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{where} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{where} is a {type(key).__name__}, not an RSA private key")
    return key


def decrypt(content: EncryptedContent, keys: Mapping[str, rsa.RSAPrivateKey]) -> str:
    """The resource JSON ``content`` holds; ``PermanentError`` (its own class) if it cannot be had."""
    private_key = _private_key(content.certificate_id, keys)
    wrapped = _b64("dataKey", content.data_key)
    ciphertext = _b64("data", content.data)
    signature = _b64("dataSignature", content.data_signature)
    key = _unwrap(private_key, wrapped, content.certificate_id)
    _verify(key, ciphertext, signature)
    return _aes_decrypt(key, ciphertext)


def _private_key(certificate_id: str, keys: Mapping[str, rsa.RSAPrivateKey]) -> rsa.RSAPrivateKey:
    key = keys.get(certificate_id)
    if key is None:
        raise PermanentError(
            f"no decryption key for encryptionCertificateId {certificate_id!r} ({len(keys)} configured in {SETTING})",
            "no_decryption_key",
        )
    return key


def _b64(field: str, value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise PermanentError(f"encryptedContent.{field} is not valid base64", "undecryptable") from None


def _unwrap(private_key: rsa.RSAPrivateKey, wrapped: bytes, certificate_id: str) -> bytes:
    """The AES key from ``dataKey`` (RSA-OAEP, SHA-1, MGF1-SHA-1)."""
    oaep = OAEP(mgf=MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    try:
        key = private_key.decrypt(wrapped, oaep)
    except ValueError:
        raise PermanentError(
            f"dataKey does not decrypt with the key of certificate id {certificate_id!r} (RSA-OAEP-SHA1)",
            "undecryptable",
        ) from None
    if len(key) != KEY_BYTES:
        raise PermanentError(f"dataKey holds a {len(key)}-byte key, not {KEY_BYTES} bytes", "undecryptable")
    return key


def _verify(key: bytes, ciphertext: bytes, signature: bytes) -> None:
    """HMAC-SHA256 of the ciphertext under the key, compared in constant time with ``dataSignature``."""
    expected = hmac.new(key, ciphertext, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise PermanentError(
            "dataSignature does not match the HMAC-SHA256 of data: tampered or corrupt, not decrypted", "bad_signature"
        )


def _aes_decrypt(key: bytes, ciphertext: bytes) -> str:
    """AES-256-CBC (IV = the key's first 16 bytes), PKCS7 unpadded, as UTF-8 text."""
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:IV_BYTES])).decryptor()
    unpadder = padding.PKCS7(algorithms.AES.block_size).unpadder()
    try:
        padded = decryptor.update(ciphertext) + decryptor.finalize()
        plain = unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:  # not whole blocks, or bad padding
        raise PermanentError(f"data does not decrypt (AES-256-CBC, PKCS7): {exc}", "undecryptable") from None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:  # its message would quote the plaintext
        raise PermanentError("data decrypts to bytes that are not UTF-8 text", "undecryptable") from None
