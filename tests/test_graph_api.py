"""The Graph client layer (syncnotify/graph/): error classification and retries on canned answers, then tokens,
subscriptions and the validation handshake against the real FakeGraph and a real ingress."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from shared.graph_tenants import GraphTenant
from syncnotify.fakegraph import App, ClientCertificate, FakeGraph
from syncnotify.graph.api import GraphAPI, Subscription, format_time, parse_time
from syncnotify.graph.credentials import Credentials
from syncnotify.graph.errors import (
    AuthorityUnreachable,
    BadRequest,
    Conflict,
    Forbidden,
    GraphAuthError,
    NotFound,
    Throttled,
    Unavailable,
    ValidationFailed,
)
from syncnotify.redis_server import EmbeddedRedis, free_port
from tests.processes import service, service_env

API = "https://graph.test/v1.0"
SECRET = "s3cret-Value~never-shown"
NOTIFY_URL = "https://rooms.example.com/api/webhooks/graph?tenant=Default"
LIFECYCLE_URL = "https://rooms.example.com/api/webhooks/graph/lifecycle?tenant=Default"
RESOURCE = "users/room1@example.com/events"


class StaticCredentials(Credentials):
    """Hands out numbered tokens without an authority; counts how often the cached one was dropped."""

    def __init__(self, tenant: GraphTenant) -> None:
        super().__init__(tenant)
        self.issued = 0
        self.forgotten = 0

    def token(self) -> str:
        self.issued += 1
        return f"token-{self.forgotten}"

    def forget_token(self) -> None:
        self.forgotten += 1


def subscription_json(subscription_id: str = "sub-1", **extra: Any) -> dict[str, Any]:
    return {
        "id": subscription_id,
        "resource": RESOURCE,
        "changeType": "created,updated,deleted",
        "notificationUrl": NOTIFY_URL,
        "lifecycleNotificationUrl": LIFECYCLE_URL,
        "expirationDateTime": "2026-12-03T07:00:00.1234567Z",
        "clientState": "state-secret",
        **extra,
    }


def graph_error(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


Handler = Callable[[httpx.Request], httpx.Response]


class Canned:
    """A GraphAPI whose HTTP answers come from ``answers`` in turn; records requests and sleeps."""

    def __init__(self, *answers: httpx.Response | Exception | Handler, attempts: int = 4) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []
        tenant = GraphTenant(
            "Default", directory_tenant_id="dir", client_id="app", client_secret=SecretStr(SECRET), api_url=API
        )
        self.credentials = StaticCredentials(tenant)
        http = httpx.Client(transport=httpx.MockTransport(self._answer))
        self.api = GraphAPI(tenant, self.credentials, http, attempts=attempts, max_wait=5, sleep=self.sleeps.append)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer(request) if callable(answer) else answer


def create(canned: Canned) -> Subscription:
    expires = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)
    return canned.api.create(RESOURCE, NOTIFY_URL, LIFECYCLE_URL, "state-secret", expires)


# --- canned answers: what each failure becomes --------------------------------------------------------------


def test_create_sends_graph_its_fields_and_reads_the_subscription() -> None:
    canned = Canned(httpx.Response(201, json=subscription_json()))
    subscription = create(canned)
    request = canned.requests[0]
    assert (request.method, str(request.url)) == ("POST", f"{API}/subscriptions")
    assert request.headers["Authorization"] == "Bearer token-0"
    assert request.headers["client-request-id"]
    assert json.loads(request.content) == {
        "changeType": "created,updated,deleted",
        "notificationUrl": NOTIFY_URL,
        "lifecycleNotificationUrl": LIFECYCLE_URL,
        "resource": RESOURCE,
        "expirationDateTime": "2026-12-03T07:00:00.000Z",
        "clientState": "state-secret",
    }
    assert subscription.expires_at == datetime(2026, 12, 3, 7, 0, 0, 123456, tzinfo=UTC)
    assert subscription.client_state == "state-secret"
    assert "state-secret" not in repr(subscription)


def test_times_are_utc_with_z_and_naive_ones_are_refused() -> None:
    assert format_time(datetime(2026, 1, 2, 4, 5, 6, tzinfo=UTC) + timedelta(hours=0)) == "2026-01-02T04:05:06.000Z"
    plus_two = datetime.fromisoformat("2026-01-02T06:05:06+02:00")
    assert format_time(plus_two) == "2026-01-02T04:05:06.000Z"
    assert parse_time("2026-01-02T04:05:06Z") == datetime(2026, 1, 2, 4, 5, 6, tzinfo=UTC)
    with pytest.raises(ValueError, match="no time zone"):
        format_time(datetime(2026, 1, 2))


def test_a_failed_handshake_is_validation_failed_and_says_where_to_look() -> None:
    message = "Subscription validation request failed. Notification endpoint must respond with 200 OK."
    canned = Canned(graph_error(400, "ValidationError", message))
    with pytest.raises(ValidationFailed) as caught:
        create(canned)
    text = str(caught.value)
    assert "tenant 'Default'" in text and NOTIFY_URL in text and message.rstrip(".") in text
    assert "SYNCNOTIFY_PUBLIC_URL" in text
    assert not caught.value.transient and caught.value.status == 400


def test_other_4xx_answers_are_classified() -> None:
    cases: list[tuple[httpx.Response, type[Exception], str]] = [
        (graph_error(400, "InvalidRequest", "Unsupported resource"), BadRequest, "Unsupported resource"),
        (graph_error(403, "ErrorAccessDenied", "Access is denied."), Forbidden, "Calendars.Read application"),
        (
            graph_error(403, "ErrorAccessDenied", "Blocked by tenant configured AppOnly AccessPolicy settings."),
            Forbidden,
            "an application access policy excludes mailbox room1@example.com",
        ),
        (graph_error(404, "ResourceNotFound", "gone"), NotFound, "no such subscription"),
    ]
    for response, kind, says in cases:
        with pytest.raises(kind, match=says) as caught:
            create(Canned(response))
        assert "tenant 'Default'" in str(caught.value)
        assert type(caught.value) is kind and not caught.value.transient  # type: ignore[attr-defined]


def test_reading_a_calendar_proves_the_permission() -> None:
    canned = Canned(httpx.Response(200, json={"value": []}))
    canned.api.read_calendar("room1@example.com")
    assert canned.requests[0].url.path == "/v1.0/users/room1@example.com/events"
    policy = "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."
    with pytest.raises(Forbidden, match="an application access policy excludes mailbox room2@example.com"):
        Canned(graph_error(403, "ErrorAccessDenied", policy)).api.read_calendar("room2@example.com")
    with pytest.raises(NotFound, match="Graph knows no mailbox nobody@example.com"):
        Canned(graph_error(404, "ErrorInvalidUser", "no such user")).api.read_calendar("nobody@example.com")


def test_conflict_names_the_existing_subscription() -> None:
    message = "Subscription Id 7f2c36b8-1d2e-4c1b-9a53-0e7b1e3a9d11 already exists for the requested combination"
    with pytest.raises(Conflict) as caught:
        create(Canned(graph_error(409, "ExtensionError", message)))
    assert caught.value.existing_id == "7f2c36b8-1d2e-4c1b-9a53-0e7b1e3a9d11"
    with pytest.raises(Conflict) as caught:
        create(Canned(graph_error(409, "Conflict", "another conflict")))
    assert caught.value.existing_id is None


def test_429_waits_its_retry_after_in_seconds_or_as_a_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    canned = Canned(
        graph_error(429, "TooManyRequests", "slow down", **{"Retry-After": "2"}),
        graph_error(429, "TooManyRequests", "slow down", **{"Retry-After": later}),
        httpx.Response(200, json=subscription_json()),
    )
    canned.api.renew("sub-1", datetime(2026, 12, 3, tzinfo=UTC))
    assert canned.sleeps[0] == 2 and 1 < canned.sleeps[1] <= 3
    assert len(canned.requests) == 3


def test_429_asking_longer_than_max_wait_is_raised_at_once() -> None:
    canned = Canned(graph_error(429, "TooManyRequests", "slow down", **{"Retry-After": "120"}))
    with pytest.raises(Throttled) as caught:
        canned.api.renew("sub-1", datetime(2026, 12, 3, tzinfo=UTC))
    assert caught.value.retry_after == 120 and caught.value.transient
    assert canned.sleeps == []


def test_5xx_and_network_errors_back_off_then_give_up() -> None:
    ok = Canned(
        graph_error(503, "ServiceUnavailable", "busy"),
        httpx.ConnectError("connection refused"),
        httpx.Response(204),
    )
    ok.api.reauthorize("sub-1")
    assert len(ok.requests) == 3 and len(ok.sleeps) == 2
    assert 0.25 <= ok.sleeps[0] <= 0.5 and 0.5 <= ok.sleeps[1] <= 1.0  # doubling, with jitter

    down = Canned(*[graph_error(500, "InternalServerError", "oops")] * 3, attempts=3)
    with pytest.raises(Unavailable, match="deleting subscription sub-1 failed: Graph is unavailable") as caught:
        down.api.delete("sub-1")
    assert caught.value.transient and len(down.requests) == 3

    timeout = Canned(httpx.ReadTimeout("timed out"), attempts=1)
    with pytest.raises(Unavailable, match="did not answer"):
        timeout.api.get("sub-1")


def test_401_drops_the_cached_token_and_tries_once_more() -> None:
    expired = graph_error(401, "InvalidAuthenticationToken", "Access token has expired.")
    canned = Canned(expired, httpx.Response(200, json=subscription_json()))
    canned.api.get("sub-1")
    assert canned.credentials.forgotten == 1
    assert [r.headers["Authorization"] for r in canned.requests] == ["Bearer token-0", "Bearer token-1"]

    refused = Canned(expired, expired)
    with pytest.raises(GraphAuthError, match="refused a new access token"):
        refused.api.get("sub-1")
    assert len(refused.requests) == 2


def test_list_follows_next_links() -> None:
    canned = Canned(
        httpx.Response(
            200, json={"value": [subscription_json("a")], "@odata.nextLink": f"{API}/subscriptions?$skip=1"}
        ),
        httpx.Response(200, json={"value": [subscription_json("b")]}),
    )
    assert [s.id for s in canned.api.list()] == ["a", "b"]
    assert str(canned.requests[1].url) == f"{API}/subscriptions?$skip=1"


def test_no_secret_in_reprs() -> None:
    canned = Canned()
    for thing in (canned.api, canned.credentials, canned.api.tenant):
        assert SECRET not in repr(thing)


# --- against the real FakeGraph (and a real ingress for the validation handshake) ---------------------------

DIRECTORY = "5d1c7e0a-0000-4000-8000-00000000d1e0"
ROOM = "room1@example.com"
OTHER_ROOM = "room2@example.com"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGraph]:
    with FakeGraph(lifetime_seconds=90) as graph:
        yield graph


@pytest.fixture(scope="module")
def ingress(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``syncnotify ingress`` that answers Graph's handshakes for tenant Default."""
    tmp = tmp_path_factory.mktemp("ingress")
    env = service_env(
        redis_server.url, f"sqlite:///{tmp / 'syncnotify.db'}", tmp, SYNCNOTIFY_GRAPH_CLIENT_STATE="state-secret"
    )
    with service(env, tmp, workers=0) as url:
        yield url


@pytest.fixture
def trusted(fake: FakeGraph, monkeypatch: pytest.MonkeyPatch) -> FakeGraph:
    """The fake, its test CA trusted by httpx and by msal's requests."""
    monkeypatch.setenv("SSL_CERT_FILE", str(fake.ca_file))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_file))
    return fake


@dataclass
class Tenant:
    """A ROOMS tenant registered as an app at the fake, with its client."""

    config: GraphTenant
    credentials: Credentials
    api: GraphAPI

    def token_requests(self, fake: FakeGraph) -> int:
        return sum(
            1 for r in fake.requests if r.path.endswith("/oauth2/v2.0/token") and r.client_id == self.config.client_id
        )


def register(fake: FakeGraph, secret: str | None = SECRET, certificate: Path | None = None, **app: Any) -> Tenant:
    """A new app at the fake (unless ``app`` says otherwise, with the secret and full permission)."""
    client_id = str(uuid.uuid4())
    pem = certificate.read_bytes() if certificate else None
    fake.add_app(App(DIRECTORY, client_id, client_secret=secret, certificate_pem=pem, **app))
    return connect(fake, client_id, secret, certificate)


def connect(fake: FakeGraph, client_id: str, secret: str | None, certificate: Path | None = None) -> Tenant:
    config = GraphTenant(
        "Default",
        directory_tenant_id=DIRECTORY,
        client_id=client_id,
        client_secret=SecretStr(secret) if secret and not certificate else None,
        client_certificate=certificate,
        api_url=fake.api_url,
        authority_url=fake.authority_url,
    )
    credentials = Credentials(config)
    return Tenant(config, credentials, GraphAPI(config, credentials, max_wait=5))


def subscribe(tenant: Tenant, base_url: str, mailbox: str = ROOM) -> Subscription:
    query = "?tenant=Default"
    return tenant.api.create(
        f"users/{mailbox}/events",
        f"{base_url}/api/webhooks/graph{query}",
        f"{base_url}/api/webhooks/graph/lifecycle{query}",
        "state-secret",
        datetime.now(UTC) + timedelta(minutes=10_000),
    )


def shown(error: BaseException) -> str:
    """All an operator could see of ``error``: its text, its repr and those of its causes."""
    parts = [str(error), repr(error)]
    if error.__cause__ is not None or error.__context__ is not None:
        parts.append(shown(error.__cause__ or error.__context__))  # type: ignore[arg-type]
    text = " ".join(parts)
    assert SECRET not in text and "eyJ" not in text  # neither the secret nor a JWT
    return text


def test_a_secret_gets_a_token_once_for_many_calls(trusted: FakeGraph) -> None:
    tenant = register(trusted)
    assert tenant.api.list() == []
    assert tenant.api.list() == []
    assert tenant.credentials.token() == tenant.credentials.token()
    assert tenant.token_requests(trusted) == 1
    assert SECRET not in repr(tenant.credentials) and SECRET not in repr(tenant.config)


def test_a_certificate_gets_a_token(trusted: FakeGraph, tmp_path: Path) -> None:
    made = ClientCertificate.make()
    pem = tmp_path / "app.pem"
    pem.write_bytes(made.private_key_pem + made.certificate_pem)
    tenant = register(trusted, secret=None, certificate=pem)
    assert tenant.api.list() == []
    assert tenant.token_requests(trusted) == 1

    # a different certificate than the app's: refused, and the message says it was the certificate
    stranger = ClientCertificate.make()
    other = tmp_path / "other.pem"
    other.write_bytes(stranger.certificate_pem + stranger.private_key_pem)
    with pytest.raises(GraphAuthError, match="the certificate .*other.pem was refused"):
        connect(trusted, tenant.config.client_id or "", None, other).credentials.token()

    keyless = tmp_path / "keyless.pem"
    keyless.write_bytes(made.certificate_pem)
    with pytest.raises(GraphAuthError, match="holds no private key"):
        connect(trusted, tenant.config.client_id or "", None, keyless).credentials.token()


def test_refused_credentials_say_which_in_plain_words(trusted: FakeGraph) -> None:
    good = register(trusted)
    cases = [
        (connect(trusted, good.config.client_id or "", "wrong-" + SECRET), "the client secret is wrong"),
        (connect(trusted, str(uuid.uuid4()), SECRET), f"is unknown in directory tenant {DIRECTORY}"),
    ]
    for tenant, says in cases:
        with pytest.raises(GraphAuthError) as caught:
            tenant.api.list()
        assert says in shown(caught.value) and "tenant 'Default'" in str(caught.value)
        assert not caught.value.transient

    lost = connect(trusted, good.config.client_id or "", SECRET)
    lost = Tenant(*_with_directory(lost, str(uuid.uuid4())))
    with pytest.raises(GraphAuthError, match="directory tenant .* not found") as caught:
        lost.credentials.token()
    shown(caught.value)

    trusted.revoke(good.config.client_id or "")
    try:
        with pytest.raises(GraphAuthError, match="is disabled in directory tenant") as caught:
            connect(trusted, good.config.client_id or "", SECRET).credentials.token()
        shown(caught.value)
    finally:
        trusted.restore(good.config.client_id or "")


def _with_directory(tenant: Tenant, directory: str) -> tuple[GraphTenant, Credentials, GraphAPI]:
    config = replace(tenant.config, directory_tenant_id=directory)
    credentials = Credentials(config)
    return config, credentials, GraphAPI(config, credentials)


def test_a_subscription_from_create_to_delete(trusted: FakeGraph, ingress: str) -> None:
    tenant = register(trusted)
    asked = datetime.now(UTC)
    created = subscribe(tenant, ingress)
    assert created.id in trusted.subscriptions
    assert created.resource == f"users/{ROOM}/events" and created.client_state == "state-secret"
    assert created.expires_at <= asked + timedelta(seconds=95)  # the fake grants 90 s, not 10,000 minutes

    renewed = tenant.api.renew(created.id, datetime.now(UTC) + timedelta(minutes=10_000))
    assert renewed.expires_at >= created.expires_at and trusted.subscriptions[created.id].renewals == 1
    tenant.api.reauthorize(created.id)
    assert trusted.subscriptions[created.id].reauthorizations == 1
    assert tenant.api.get(created.id).id == created.id
    assert [s.id for s in tenant.api.list()] == [created.id]

    with pytest.raises(Conflict) as caught:
        subscribe(tenant, ingress)
    assert caught.value.existing_id == created.id

    tenant.api.delete(created.id)
    with pytest.raises(NotFound):
        tenant.api.delete(created.id)
    assert tenant.token_requests(trusted) == 1


def test_create_with_the_ingress_down_says_the_handshake_failed(trusted: FakeGraph) -> None:
    tenant = register(trusted)
    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ValidationFailed) as caught:
        subscribe(tenant, nowhere)
    text = shown(caught.value)
    assert f"Graph could not validate the notification URL {nowhere}/api/webhooks/graph?tenant=Default" in text
    assert "is the ingress reachable at SYNCNOTIFY_PUBLIC_URL?" in text
    assert trusted.subscriptions == {} or all(
        s.client_id != tenant.config.client_id for s in trusted.subscriptions.values()
    )


def test_429_and_503_are_retried_and_a_forgotten_subscription_is_not_found(trusted: FakeGraph, ingress: str) -> None:
    tenant = register(trusted)
    created = subscribe(tenant, ingress, OTHER_ROOM)
    later = datetime.now(UTC) + timedelta(minutes=60)

    trusted.fail_next("PATCH", created.id, status=429, retry_after=1)
    started = time.monotonic()
    tenant.api.renew(created.id, later)
    assert time.monotonic() - started >= 1

    trusted.fail_next("PATCH", created.id, status=503, retry_after=None, count=2)
    tenant.api.renew(created.id, later)
    patches = [r.status for r in trusted.requests if r.method == "PATCH" and created.id in r.path]
    assert patches == [429, 200, 503, 503, 200]

    trusted.forget(created.id)
    with pytest.raises(NotFound) as caught:
        tenant.api.renew(created.id, later)
    assert caught.value.status == 404 and created.id in shown(caught.value)


def test_403_says_permission_or_access_policy(trusted: FakeGraph, ingress: str) -> None:
    unconsented = register(trusted, permission=False)
    with pytest.raises(Forbidden, match="lacks the Calendars.Read application permission") as caught:
        subscribe(unconsented, ingress)
    shown(caught.value)

    confined = register(trusted, mailboxes={OTHER_ROOM})
    with pytest.raises(Forbidden, match=f"an application access policy excludes mailbox {ROOM}") as caught:
        subscribe(confined, ingress, ROOM)
    shown(caught.value)


def test_an_unreachable_authority_is_transient(trusted: FakeGraph) -> None:
    tenant = connect(trusted, str(uuid.uuid4()), SECRET)
    config = replace(tenant.config, authority_url=f"https://127.0.0.1:{free_port()}")
    with pytest.raises(AuthorityUnreachable, match="is unreachable") as caught:
        Credentials(config).token()
    assert caught.value.transient and isinstance(caught.value, GraphAuthError)
    shown(caught.value)

    busy = register(trusted)
    trusted.fail_next("POST", "/oauth2/v2.0/token", status=503, retry_after=None)
    with pytest.raises(AuthorityUnreachable, match="is unavailable") as caught:
        busy.credentials.token()
    assert caught.value.transient


def test_a_token_near_its_expiry_is_replaced_by_a_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """msal refreshes a token about to expire (within five minutes): with 60-s tokens each call gets a new one,
    and the API calls keep working; with the hour-long ones above, one token serves them all."""
    with FakeGraph(lifetime_seconds=90, token_seconds=60) as short:
        monkeypatch.setenv("SSL_CERT_FILE", str(short.ca_file))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(short.ca_file))
        tenant = register(short)
        first = tenant.credentials.token()
        assert tenant.api.list() == []
        assert tenant.credentials.token() != first
        assert tenant.token_requests(short) == 3
