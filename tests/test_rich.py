"""Rich Graph notifications: validation tokens (worker.tokens), decryption (worker.decrypt), and how a POST's
items come out of both (worker.rich).  Microsoft's side is played by tests.graph_keys: a JWKS over HTTPS
trusted through ``SSL_CERT_FILE``, tokens and ``encryptedContent`` made as Graph makes them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP

from shared.errors import ConfigError, PermanentError, TransientError
from shared.graph import PUBLISHER_ID
from tests.graph_keys import (  # noqa: F401
    GraphKeys,
    b64,
    graph_keys_fixture,
    new_rsa_key,
    public_jwk,
    trusted_graph_keys_fixture,
    unused_url,
    write_private_key,
)
from tests.graph_samples import APP_ID, TENANT_ID
from worker.decrypt import decrypt, load_keys
from worker.graph_types import BadItem, Change, EncryptedContent, GraphPayload
from worker.rich import NO_VALIDATOR, resolve
from worker.tokens import TokenValidator

OTHER_TENANT = "e83a1c5f-7d20-4b96-a4c7-3f0b9d62e1a8"
OTHER_APP = "1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"
RESOURCE = {"@odata.type": "#Microsoft.Graph.Event", "id": "AAMkAD-event-1", "subject": "Réunion — salle A-101"}


def validator(keys: GraphKeys, **options: Any) -> TokenValidator:
    """A fresh validator (its own, empty JWKS cache) for the samples' app."""
    return TokenValidator(keys.jwks_url, [APP_ID], **options)


def rejected(keys: GraphKeys, tokens: list[str]) -> PermanentError:
    with pytest.raises(PermanentError) as caught:
        validator(keys).check(tokens)
    assert caught.value.error_class == "invalid_validation_token"
    for token in tokens:
        assert len(token) < 8 or token not in str(caught.value)  # a token is never quoted
    return caught.value


# validation tokens


def test_valid_v1_token_vouches_for_its_tenant(trusted_graph_keys: GraphKeys) -> None:
    assert validator(trusted_graph_keys).check([trusted_graph_keys.mint()]) == {TENANT_ID}


def test_valid_v2_token_vouches_for_its_tenant(trusted_graph_keys: GraphKeys) -> None:
    token = trusted_graph_keys.mint(version="2.0")
    assert validator(trusted_graph_keys).check([token]) == {TENANT_ID}


def test_tokens_of_several_tenants_vouch_for_each(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    tokens = [keys.mint(), keys.mint({"tid": OTHER_TENANT}, version="2.0")]
    assert validator(keys).check(tokens) == {TENANT_ID, OTHER_TENANT}


def test_any_configured_audience_is_accepted(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    both = TokenValidator(keys.jwks_url, [OTHER_APP, APP_ID])
    assert both.check([keys.mint(), keys.mint({"aud": OTHER_APP})]) == {TENANT_ID}


def test_clock_skew_within_a_minute_is_tolerated(trusted_graph_keys: GraphKeys) -> None:
    now = int(time.time())
    just_expired = trusted_graph_keys.mint({"exp": now - 30})
    almost_valid = trusted_graph_keys.mint({"nbf": now + 30})
    assert validator(trusted_graph_keys).check([just_expired, almost_valid]) == {TENANT_ID}


INVALID: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    # name: (mint's overrides, mint's options, what the message says)
    "expired": ({"exp": int(time.time()) - 3600, "nbf": int(time.time()) - 7200}, {}, "expired"),
    "not yet valid": ({"nbf": int(time.time()) + 3600}, {}, "not valid yet"),
    "no exp": ({"exp": None}, {}, "no 'exp' claim"),
    "no nbf": ({"nbf": None}, {}, "no 'nbf' claim"),
    "wrong audience": ({"aud": OTHER_APP}, {}, "aud is none of the configured app ids"),
    "no audience": ({"aud": None}, {}, "no 'aud' claim"),
    "v1 appid of another app": ({"appid": OTHER_APP}, {}, f"needs appid={PUBLISHER_ID}"),
    "v1 with azp only": ({"appid": None, "azp": PUBLISHER_ID}, {}, "needs appid="),
    "v2 azp of another app": ({"azp": OTHER_APP}, {"version": "2.0"}, f"needs azp={PUBLISHER_ID}"),
    "v2 with appid only": ({"azp": None, "appid": PUBLISHER_ID}, {"version": "2.0"}, "needs azp="),
    "unknown version": ({"ver": "3.0"}, {}, "unknown token version"),
    "no version": ({"ver": None}, {}, "no 'ver' claim"),
    "no tenant": ({"tid": None}, {}, "no 'tid' claim"),
    "v1 issuer of another tenant": ({"iss": f"https://sts.windows.net/{OTHER_TENANT}/"}, {}, "issuer"),
    "v1 with the v2 issuer": ({"iss": f"https://login.microsoftonline.com/{TENANT_ID}/v2.0"}, {}, "issuer"),
    "v2 with the v1 issuer": ({"iss": f"https://sts.windows.net/{TENANT_ID}/"}, {"version": "2.0"}, "issuer"),
    "foreign issuer": ({"iss": "https://evil.example/"}, {}, "issuer"),
    "unknown kid": ({}, {"kid": "no-such-key"}, "key id 'no-such-key', which the JWKS"),
    "no kid": ({}, {"kid": None}, "no key id"),
    "alg none": ({}, {"algorithm": "none"}, "algorithm 'none'"),
    "HS256": ({}, {"algorithm": "HS256"}, "algorithm 'HS256'"),
    "RS384": ({}, {"algorithm": "RS384"}, "algorithm 'RS384'"),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid_token_is_rejected(trusted_graph_keys: GraphKeys, case: str) -> None:
    overrides, options, says = INVALID[case]
    error = rejected(trusted_graph_keys, [trusted_graph_keys.mint(overrides, **options)])
    assert str(error).startswith("validation token 1 of 1: ")
    assert says in str(error)


def test_token_signed_by_a_key_outside_the_jwks_is_rejected(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    error = rejected(keys, [keys.mint(key=keys.stranger_key)])  # under the JWKS key's kid
    assert "signature does not verify" in str(error)


def test_tampered_claims_are_rejected(trusted_graph_keys: GraphKeys) -> None:
    header, _, signature = trusted_graph_keys.mint().split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"aud": APP_ID}).encode()).rstrip(b"=").decode()
    error = rejected(trusted_graph_keys, [f"{header}.{forged}.{signature}"])
    assert "signature does not verify" in str(error)


@pytest.mark.parametrize("garbage", ["", "garbage", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30", "\u00e9.\u00e9.\u00e9"])
def test_garbage_token_is_rejected(trusted_graph_keys: GraphKeys, garbage: str) -> None:
    assert "validation token 1 of 1: " in str(rejected(trusted_graph_keys, [garbage]))


def test_one_bad_token_among_several_is_named_by_position(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    error = rejected(keys, [keys.mint(), keys.mint({"aud": OTHER_APP}), keys.mint()])
    assert str(error).startswith("validation token 2 of 3: ")


def test_no_tokens_is_rejected(trusted_graph_keys: GraphKeys) -> None:
    assert str(rejected(trusted_graph_keys, [])) == "a rich notification without validationTokens"


def test_no_configured_audience_is_rejected_with_the_settings_to_set(trusted_graph_keys: GraphKeys) -> None:
    with pytest.raises(PermanentError, match="SYNCNOTIFY_GRAPH_APP_IDS or SYNCNOTIFY_GRAPH_CLIENT_ID") as caught:
        TokenValidator(trusted_graph_keys.jwks_url, []).check([trusted_graph_keys.mint()])
    assert caught.value.error_class == "invalid_validation_token"


# the JWKS


def test_jwks_is_fetched_once_and_cached(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    checker = validator(keys)
    before = keys.server.hits
    checker.check([keys.mint()])
    checker.check([keys.mint(), keys.mint(version="2.0")])
    assert keys.server.hits - before == 1


def test_jwks_is_fetched_again_when_the_cache_expires(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    checker = validator(keys, cache_seconds=0.2)
    before = keys.server.hits
    checker.check([keys.mint()])
    time.sleep(0.3)
    checker.check([keys.mint()])
    assert keys.server.hits - before == 2


def test_unknown_kid_fetches_the_jwks_again_for_a_rotated_key(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    checker = validator(keys, refetch_cooldown=0)
    checker.check([keys.mint()])  # the JWKS is cached, without the new key
    rotated = new_rsa_key()
    before = keys.server.hits
    with keys.server.publishing(public_jwk(rotated, "sn-test-signing-2")):
        assert checker.check([keys.mint(key=rotated, kid="sn-test-signing-2")]) == {TENANT_ID}
    assert keys.server.hits - before == 1


def test_unknown_kids_do_not_refetch_within_the_cooldown(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    checker = validator(keys)
    checker.check([keys.mint()])
    before = keys.server.hits
    for attempt in range(3):
        with pytest.raises(PermanentError, match="which the JWKS"):
            checker.check([keys.mint(kid=f"forged-{attempt}")])
    assert keys.server.hits == before


def test_jwks_server_down_is_transient(trusted_graph_keys: GraphKeys) -> None:
    url = unused_url()
    with pytest.raises(TransientError, match=f"the JWKS at {url} cannot be used"):
        TokenValidator(url, [APP_ID]).check([trusted_graph_keys.mint()])


def test_jwks_http_error_is_transient(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    with keys.server.failing(503), pytest.raises(TransientError, match=f"{keys.jwks_url}.*503"):
        validator(keys).check([keys.mint()])


def test_untrusted_jwks_certificate_is_transient(graph_keys: GraphKeys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # the system CAs do not know the test CA
    with pytest.raises(TransientError, match=f"{graph_keys.jwks_url}.*CERTIFICATE_VERIFY_FAILED"):
        validator(graph_keys).check([graph_keys.mint()])


def test_a_bad_token_fetches_nothing(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    before = keys.server.hits
    rejected(keys, [keys.mint(algorithm="none")])
    rejected(keys, ["garbage"])
    assert keys.server.hits == before


# decryption


def content_of(encrypted: dict[str, Any]) -> EncryptedContent:
    """An ``encryptedContent`` dict as worker.graph parses it."""
    return EncryptedContent(
        data=encrypted["data"],
        data_key=encrypted["dataKey"],
        data_signature=encrypted["dataSignature"],
        certificate_id=encrypted["encryptionCertificateId"],
        thumbprint=encrypted.get("encryptionCertificateThumbprint"),
    )


def wrap(keys: GraphKeys, aes_key: bytes) -> str:
    """``aes_key`` wrapped for the encryption key as Graph wraps it (RSA-OAEP-SHA1), in base64."""
    oaep = OAEP(mgf=MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    return b64(keys.encryption_key.public_key().encrypt(aes_key, oaep))


def decryption_error(content: EncryptedContent, keys: GraphKeys) -> PermanentError:
    with pytest.raises(PermanentError) as caught:
        decrypt(content, load_keys({keys.certificate_id: keys.key_file}))
    return caught.value


def test_decrypt_round_trip(graph_keys: GraphKeys) -> None:
    text = json.dumps(RESOURCE, ensure_ascii=False)
    content = content_of(graph_keys.encrypt(text))
    assert decrypt(content, load_keys({graph_keys.certificate_id: graph_keys.key_file})) == text


def test_each_item_has_its_own_key(graph_keys: GraphKeys) -> None:
    first, second = graph_keys.encrypt("{}"), graph_keys.encrypt("{}")
    assert first["dataKey"] != second["dataKey"]
    assert first["data"] != second["data"]


def test_tampered_signature_is_bad_signature(graph_keys: GraphKeys) -> None:
    encrypted = graph_keys.encrypt(json.dumps(RESOURCE))
    encrypted["dataSignature"] = b64(bytes(32))
    error = decryption_error(content_of(encrypted), graph_keys)
    assert error.error_class == "bad_signature"


def test_signature_is_checked_before_decrypting(graph_keys: GraphKeys) -> None:
    """17 bytes are no whole AES block: decrypting them would fail.  Under a wrong signature the error is
    still ``bad_signature``, so the AES step was never reached; under the right one it is ``undecryptable``."""
    aes_key = bytes(range(32))
    not_blocks = b"\x01" * 17
    wrapped = wrap(graph_keys, aes_key)
    good_signature = b64(hmac.new(aes_key, not_blocks, hashlib.sha256).digest())
    forged = EncryptedContent(b64(not_blocks), wrapped, b64(b"\x00" * 32), graph_keys.certificate_id, None)
    assert decryption_error(forged, graph_keys).error_class == "bad_signature"
    signed = EncryptedContent(b64(not_blocks), wrapped, good_signature, graph_keys.certificate_id, None)
    assert decryption_error(signed, graph_keys).error_class == "undecryptable"


def test_tampered_data_is_bad_signature(graph_keys: GraphKeys) -> None:
    encrypted = graph_keys.encrypt(json.dumps(RESOURCE))
    data = bytearray(base64.b64decode(encrypted["data"]))
    data[0] ^= 1
    encrypted["data"] = b64(bytes(data))
    assert decryption_error(content_of(encrypted), graph_keys).error_class == "bad_signature"


def test_unknown_certificate_id_is_no_decryption_key(graph_keys: GraphKeys) -> None:
    content = content_of(graph_keys.encrypt("{}", certificate_id="sn-retired-cert"))
    error = decryption_error(content, graph_keys)
    assert error.error_class == "no_decryption_key"
    assert "'sn-retired-cert'" in str(error)
    assert "1 configured" in str(error)
    assert graph_keys.certificate_id not in str(error)


def test_wrong_private_key_is_undecryptable(graph_keys: GraphKeys) -> None:
    content = content_of(graph_keys.encrypt("{}"))
    with pytest.raises(PermanentError, match="dataKey does not decrypt") as caught:
        decrypt(content, {graph_keys.certificate_id: new_rsa_key()})
    assert caught.value.error_class == "undecryptable"


def test_wrapped_key_of_the_wrong_length_is_undecryptable(graph_keys: GraphKeys) -> None:
    encrypted = graph_keys.encrypt("{}")
    encrypted["dataKey"] = wrap(graph_keys, bytes(16))
    error = decryption_error(content_of(encrypted), graph_keys)
    assert (error.error_class, "16-byte key" in str(error)) == ("undecryptable", True)


@pytest.mark.parametrize(
    ("field", "wire"), [("data", "data"), ("data_key", "dataKey"), ("data_signature", "dataSignature")]
)
def test_bad_base64_is_undecryptable_naming_the_field(graph_keys: GraphKeys, field: str, wire: str) -> None:
    encrypted = graph_keys.encrypt("{}")
    encrypted[wire] = "not base64!"
    error = decryption_error(content_of(encrypted), graph_keys)
    assert error.error_class == "undecryptable"
    assert f"encryptedContent.{wire} is not valid base64" in str(error)


def test_load_keys_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pem"
    with pytest.raises(ConfigError, match=rf"'cert-1' at {missing} cannot be read"):
        load_keys({"cert-1": missing})


def test_load_keys_names_a_file_that_is_no_key(tmp_path: Path) -> None:
    path = tmp_path / "junk.pem"
    path.write_text("not a key\n")
    with pytest.raises(ConfigError, match=rf"'cert-1' at {path} is not an unencrypted PEM private key"):
        load_keys({"cert-1": path})


def test_load_keys_refuses_an_encrypted_pem(tmp_path: Path) -> None:
    path = tmp_path / "locked.pem"
    encryption = serialization.BestAvailableEncryption(b"secret")
    path.write_bytes(
        new_rsa_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    with pytest.raises(ConfigError, match="'cert-1'.*not an unencrypted PEM private key"):
        load_keys({"cert-1": path})


def test_load_keys_refuses_a_key_that_is_not_rsa(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    with pytest.raises(ConfigError, match="'cert-1'.*not an RSA private key"):
        load_keys({"cert-1": path})


def test_load_keys_reads_each_id(graph_keys: GraphKeys, tmp_path: Path) -> None:
    other = write_private_key(new_rsa_key(), tmp_path / "other.pem")
    loaded = load_keys({graph_keys.certificate_id: graph_keys.key_file, "sn-next": other})
    assert set(loaded) == {graph_keys.certificate_id, "sn-next"}


# resolve: a POST's items


def change(index: int, *, encrypted: dict[str, Any] | None = None, tenant: str | None = TENANT_ID) -> Change:
    item: dict[str, Any] = {"subscriptionId": f"sub-{index}", "tenantId": tenant}
    if encrypted is not None:
        item["encryptedContent"] = encrypted
    return Change(
        index=index,
        subscription_id=f"sub-{index}",
        event_type="Modified",
        tenant_id=tenant,
        resource=f"Users/room/Events/event-{index}",
        item_id=f"event-{index}",
        etag=None,
        expires_at=None,
        watermark=f"graph:{index:064x}",
        item=item,
        encrypted=None if encrypted is None else content_of(encrypted),
    )


def payload(*changes: Change, tokens: tuple[str, ...] = (), bad: tuple[BadItem, ...] = ()) -> GraphPayload:
    return GraphPayload(changes=changes, lifecycle=(), bad=bad, validation_tokens=tokens)


def rich(keys: GraphKeys, index: int, resource: dict[str, Any], tenant: str | None = TENANT_ID) -> Change:
    return change(index, encrypted=keys.encrypt(json.dumps(resource)), tenant=tenant)


def classes(result: GraphPayload) -> list[tuple[int, str]]:
    return [(item.index, item.error.error_class) for item in result.bad]


def test_payload_without_rich_items_is_untouched(graph_keys: GraphKeys) -> None:
    basic = payload(change(0), change(1))
    assert resolve(basic, None, {}) is basic
    down = TokenValidator(unused_url(), [APP_ID])  # would raise TransientError if it were asked
    assert resolve(basic, down, {}) is basic


def test_mixed_basic_and_rich_items_are_resolved_in_order(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    posted = payload(change(0), rich(keys, 1, RESOURCE), change(2), rich(keys, 3, {"id": "e3"}), tokens=(keys.mint(),))
    result = resolve(posted, validator(keys), load_keys({keys.certificate_id: keys.key_file}))
    assert [c.index for c in result.changes] == [0, 1, 2, 3]
    assert [c.resource_data for c in result.changes] == [None, json.dumps(RESOURCE), None, json.dumps({"id": "e3"})]
    assert result.changes[0] is posted.changes[0]
    assert result.bad == ()


def test_failed_tokens_fail_only_the_rich_items(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    earlier = BadItem(1, None, "not an object", PermanentError("not an object", "bad_value"))
    tokens = (keys.mint({"aud": OTHER_APP}),)
    posted = payload(
        change(0), rich(keys, 2, RESOURCE), change(3), rich(keys, 4, RESOURCE), tokens=tokens, bad=(earlier,)
    )
    result = resolve(posted, validator(keys), load_keys({keys.certificate_id: keys.key_file}))
    assert result.changes == (posted.changes[0], posted.changes[2])
    assert classes(result) == [(1, "bad_value"), (2, "invalid_validation_token"), (4, "invalid_validation_token")]
    assert str(result.bad[1].error).split(": ", 1)[1].startswith("validation token 1 of 1: ")
    assert result.bad[1].item is posted.changes[1].item
    assert result.bad[1].subscription_id == "sub-2"


def test_rich_items_without_tokens_fail(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    result = resolve(payload(rich(keys, 0, RESOURCE)), validator(keys), {})
    assert classes(result) == [(0, "invalid_validation_token")]
    assert str(result.bad[0].error).endswith(": a rich notification without validationTokens")


def test_rich_items_without_a_validator_fail_naming_the_setting(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    result = resolve(payload(change(0), rich(keys, 1, RESOURCE), tokens=(keys.mint(),)), None, {})
    assert [c.index for c in result.changes] == [0]
    assert classes(result) == [(1, "invalid_validation_token")]
    assert str(result.bad[0].error).endswith(f": {NO_VALIDATOR}")


def test_rich_item_of_a_tenant_not_vouched_for_fails(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    posted = payload(
        rich(keys, 0, RESOURCE),
        rich(keys, 1, RESOURCE, tenant=OTHER_TENANT),
        rich(keys, 2, RESOURCE, tenant=None),
        rich(keys, 3, RESOURCE, tenant=TENANT_ID.upper()),  # tenant ids compare without case
        tokens=(keys.mint(),),
    )
    result = resolve(posted, validator(keys), load_keys({keys.certificate_id: keys.key_file}))
    assert [c.index for c in result.changes] == [0, 3]
    assert classes(result) == [(1, "invalid_validation_token"), (2, "invalid_validation_token")]
    assert OTHER_TENANT in str(result.bad[0].error)


def test_each_rich_item_fails_alone_with_its_decryption_error(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    tampered = keys.encrypt("{}")
    tampered["dataSignature"] = b64(bytes(32))
    posted = payload(
        rich(keys, 0, RESOURCE),
        change(1, encrypted=tampered),
        change(2, encrypted=keys.encrypt("{}", certificate_id="sn-unknown")),
        rich(keys, 3, RESOURCE),
        tokens=(keys.mint(),),
    )
    result = resolve(posted, validator(keys), load_keys({keys.certificate_id: keys.key_file}))
    assert [c.index for c in result.changes] == [0, 3]
    assert classes(result) == [(1, "bad_signature"), (2, "no_decryption_key")]


def test_unreachable_jwks_propagates_as_transient(trusted_graph_keys: GraphKeys) -> None:
    keys = trusted_graph_keys
    posted = payload(change(0), rich(keys, 1, RESOURCE), tokens=(keys.mint(),))
    with pytest.raises(TransientError):
        resolve(posted, TokenValidator(unused_url(), [APP_ID]), {})
