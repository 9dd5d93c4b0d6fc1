"""The ``validationTokens`` of rich Graph notifications: do they vouch for the POST? (SPEC §9, GRAPH.md §5.4)

A rich item carries resource data, so anyone who can reach the notification URL could plant data; the tokens
are Microsoft's proof that Graph sent the POST.  Every token must be an RS256 JWT signed by a key of the
JWKS, unexpired, issued to one of our app ids, by the tenant's Microsoft issuer, for Graph's
change-notification publisher.  PyJWT checks signature, times and audience; issuer and publisher depend on
the token's version and tenant, so they are checked here by hand.

A failed check is the payload's fault (``PermanentError``, class ``invalid_validation_token``: the items are
dead-lettered, to be replayed once the configuration is fixed).  A JWKS that cannot be fetched is the
world's fault (``TransientError``: the job runs again later).  Messages never quote a token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import jwt

from shared.errors import PermanentError, TransientError
from shared.graph import PUBLISHER_ID

#: The dead-letter class of every failed token check.
ERROR_CLASS = "invalid_validation_token"
#: The only signature algorithm Microsoft's identity platform uses for these tokens.
ALGORITHM = "RS256"
#: Clock skew tolerated on ``exp`` and ``nbf``, in seconds.
LEEWAY_SECONDS = 60
#: The claim holding the publisher's app id, by token version (``ver``).
PUBLISHER_CLAIM = {"1.0": "appid", "2.0": "azp"}
#: The issuer a token of each version must name, by its tenant id.
ISSUER = {"1.0": "https://sts.windows.net/{tid}/", "2.0": "https://login.microsoftonline.com/{tid}/v2.0"}
#: Failures of the JWKS endpoint rather than of a token (unreachable, HTTP error, bad TLS, not a JWKS).
_JWKS_FAILURES = (jwt.PyJWKClientError, jwt.PyJWKSetError, ValueError)


class TokenValidator:
    """Checks a POST's validation tokens against one JWKS, whose keys it caches for ``cache_seconds``.

    One validator lives as long as its process, so the keys are fetched once an hour, not once a POST.  A
    token naming a key id the cached set lacks makes PyJWKClient fetch the set again (at most once per
    ``refetch_cooldown`` seconds, so forged key ids cannot make us hammer the endpoint).
    HTTPS trust is urllib's default context, so ``SSL_CERT_FILE`` is honoured.
    """

    def __init__(
        self,
        jwks_url: str,
        audiences: Sequence[str],
        *,
        cache_seconds: float = 3600,
        timeout: float = 10,
        refetch_cooldown: float = 30,
    ) -> None:
        self.jwks_url = jwks_url
        self.audiences = tuple(audiences)
        self._client = jwt.PyJWKClient(
            jwks_url,
            cache_jwk_set=True,
            lifespan=cache_seconds,
            timeout=timeout,
            cooldown_duration=refetch_cooldown,
        )

    def check(self, tokens: Sequence[str]) -> frozenset[str]:
        """The tenant ids (``tid``) the tokens vouch for; ``PermanentError`` if any token fails."""
        if not self.audiences:
            raise PermanentError(
                "no app id to check validation tokens' audience against: set SYNCNOTIFY_GRAPH_APP_IDS or"
                " SYNCNOTIFY_GRAPH_CLIENT_ID",
                ERROR_CLASS,
            )
        if not tokens:
            raise PermanentError("a rich notification without validationTokens", ERROR_CLASS)
        tenants: set[str] = set()
        for number, token in enumerate(tokens, start=1):
            try:
                tenants.add(self._check_one(token))
            except _TokenError as exc:
                raise PermanentError(f"validation token {number} of {len(tokens)}: {exc}", ERROR_CLASS) from None
        return frozenset(tenants)

    def _check_one(self, token: str) -> str:
        """The token's tenant id, once everything about it is checked; ``_TokenError`` saying what is wrong."""
        if not isinstance(token, str):
            raise _TokenError(f"not a string but {type(token).__name__}")
        kid = _key_id(token)
        claims = self._decode(token, self._signing_key(kid))
        return _check_claims(claims)

    def _signing_key(self, kid: str) -> Any:
        """The JWKS's public key of id ``kid``; ``TransientError`` if the JWKS cannot be had."""
        try:
            self._client.get_signing_keys()  # the cached set, or a fetch: any failure is the endpoint's
        except _JWKS_FAILURES as exc:
            raise TransientError(f"the JWKS at {self.jwks_url} cannot be used: {exc}") from exc
        try:
            return self._client.get_signing_key(kid).key
        except (jwt.PyJWKClientConnectionError, jwt.PyJWKSetError, ValueError) as exc:
            raise TransientError(f"the JWKS at {self.jwks_url} cannot be used: {exc}") from exc
        except jwt.PyJWKClientError:
            raise _TokenError(f"signed with key id {kid[:80]!r}, which the JWKS at {self.jwks_url} lacks") from None

    def _decode(self, token: str, key: Any) -> dict[str, Any]:
        """The token's claims, its signature, ``exp``, ``nbf`` and ``aud`` checked."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=list(self.audiences),
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "nbf", "aud", "iss", "tid", "ver"], "verify_iss": False},
            )
        except jwt.ExpiredSignatureError:
            raise _TokenError("expired (exp is past)") from None
        except jwt.ImmatureSignatureError:
            raise _TokenError("not valid yet (nbf is ahead)") from None
        except jwt.InvalidAudienceError:
            raise _TokenError(f"its aud is none of the configured app ids ({', '.join(self.audiences)})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _TokenError(f"no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise _TokenError("its signature does not verify with the JWKS key it names") from None
        except jwt.InvalidTokenError as exc:
            raise _TokenError(f"rejected ({type(exc).__name__}: {exc})") from None
        return claims


class _TokenError(Exception):
    """What is wrong with one token (becomes the ``PermanentError`` that numbers it)."""


def _key_id(token: str) -> str:
    """The ``kid`` of the token's header, which must also name RS256 (checked before any JWKS fetch)."""
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.DecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _TokenError(f"not a JWT ({exc})") from None
    if header.get("alg") != ALGORITHM:
        raise _TokenError(f"its header names algorithm {header.get('alg')!r}, not {ALGORITHM}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _TokenError("its header names no key id (kid)")
    return kid


def _check_claims(claims: Mapping[str, Any]) -> str:
    """The token's tenant id, once its version, publisher and issuer are Graph's."""
    version = claims["ver"]
    if version not in PUBLISHER_CLAIM:
        raise _TokenError(f"unknown token version ver={version!r} (known: 1.0, 2.0)")
    tenant = claims["tid"]
    if not isinstance(tenant, str) or not tenant:
        raise _TokenError("its tid claim is not a tenant id")
    publisher_claim = PUBLISHER_CLAIM[version]
    if claims.get(publisher_claim) != PUBLISHER_ID:
        raise _TokenError(
            f"not issued to Graph's change-notification publisher: a v{version} token needs"
            f" {publisher_claim}={PUBLISHER_ID}, it has {publisher_claim}={claims.get(publisher_claim)!r}"
        )
    issuer = ISSUER[version].format(tid=tenant)
    if claims["iss"] != issuer:
        raise _TokenError(f"issuer {claims['iss']!r} is not {issuer!r} (v{version}, tenant {tenant})")
    return tenant
