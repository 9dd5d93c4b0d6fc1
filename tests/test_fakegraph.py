"""The fake Microsoft Graph itself (syncnotify/fakegraph), against real clients: msal for tokens, httpx for Graph,
and a small receiver of our own for the handshake, the notifications and the lifecycle events."""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import requests

from syncnotify.fakegraph import App, ClientCertificate, FakeGraph
from syncnotify.fakegraph.serve import serve
from tests.graph_samples import items

TENANT = "5d1c7e0a-3b6f-4a92-8e41-0a7f3c9b2d18"
CLIENT = "c4e1b7d2-9a35-4f60-b8d1-2e7a90f3c615"
SECRET = "fake-secret-Zq7u3Wk9"
SCOPE = ["https://graph.microsoft.com/.default"]
ROOM = "room-a101@contoso.example"
CLIENT_STATE = "sn-rooms-test-state"
FAR = "2030-01-01T00:00:00Z"
#: msal ships no type information (and pyproject's mypy overrides are not this file's to change).
msal = importlib.import_module("msal")


@dataclass
class Received:
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: bytes


@dataclass
class Receiver:
    """An HTTP endpoint standing in for the ingress; ``answer`` decides how it meets the handshake."""

    url: str
    received: list[Received] = field(default_factory=list)
    answer: str = "echo"  # "echo", "wrong" (the token still URL-encoded), "error" (500)
    #: Called while a handshake waits for its answer.
    during_validation: Callable[[], None] | None = None

    def validations(self) -> list[Received]:
        return [r for r in self.received if "validationToken" in r.query]

    def posts(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.received if "validationToken" not in r.query]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            split = urlsplit(self.path)
            query = parse_qs(split.query)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.received.append(Received(split.path, query, self.headers.get("Content-Type", ""), body))
            status, out = 202, b""
            if "validationToken" in query:
                if state.during_validation is not None:
                    state.during_validation()
                token = query["validationToken"][0]
                status, out = {
                    "echo": (200, token.encode()),
                    "wrong": (200, split.query.split("validationToken=")[1].encode()),
                    "error": (500, b""),
                }[state.answer]
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


MakeFake = Callable[..., FakeGraph]


@pytest.fixture
def make_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeFake]:
    """Start FakeGraphs (the app ``CLIENT`` registered), trusted by requests and httpx through the environment."""
    started: list[FakeGraph] = []

    def make(*apps: App, **options: Any) -> FakeGraph:
        fake = FakeGraph(**options).start()
        started.append(fake)
        for app in apps or (App(TENANT, CLIENT, SECRET),):
            fake.add_app(app)
        # This machine exports its own bundle in both; requests prefers REQUESTS_CA_BUNDLE to Session.verify.
        monkeypatch.setenv("SSL_CERT_FILE", str(fake.ca_file))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_file))
        return fake

    yield make
    for fake in started:
        fake.stop()


@pytest.fixture
def fake(make_fake: MakeFake) -> FakeGraph:
    return make_fake(lifetime_seconds=90.0)


def msal_token(fake: FakeGraph, credential: str | dict[str, str], client_id: str = CLIENT) -> dict[str, Any]:
    with requests.Session() as session:
        app = msal.ConfidentialClientApplication(
            client_id,
            authority=f"{fake.authority_url}/{TENANT}",
            client_credential=credential,
            instance_discovery=False,
            http_client=session,
        )
        result: dict[str, Any] = app.acquire_token_for_client(SCOPE)
    return result


def token_request(fake: FakeGraph, tenant: str = TENANT, **form: str) -> httpx.Response:
    fields = {"grant_type": "client_credentials", "scope": SCOPE[0], **form}
    return httpx.post(f"{fake.authority_url}/{tenant}/oauth2/v2.0/token", data=fields)


@pytest.fixture
def graph(fake: FakeGraph) -> Iterator[httpx.Client]:
    """httpx on Graph with a bearer token of ``CLIENT`` (got with its secret)."""
    token = token_request(fake, client_id=CLIENT, client_secret=SECRET).json()["access_token"]
    with httpx.Client(base_url=fake.api_url, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def subscription(receiver: Receiver, mailbox: str = ROOM, expires: str = FAR, **extra: Any) -> dict[str, Any]:
    return {
        "changeType": "created,updated,deleted",
        "notificationUrl": f"{receiver.url}/api/webhooks/graph?tenant=contoso",
        "lifecycleNotificationUrl": f"{receiver.url}/api/webhooks/graph/lifecycle?tenant=contoso",
        "resource": f"users/{mailbox}/events",
        "expirationDateTime": expires,
        "clientState": CLIENT_STATE,
        **extra,
    }


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


def create(graph: httpx.Client, receiver: Receiver, **extra: Any) -> dict[str, Any]:
    response = graph.post("/subscriptions", json=subscription(receiver, **extra))
    assert response.status_code == 201, response.text
    document: dict[str, Any] = response.json()
    return document


# -- the token authority ----------------------------------------------------------------------------------------


def test_msal_gets_a_token_with_the_secret_and_it_opens_graph(fake: FakeGraph) -> None:
    result = msal_token(fake, SECRET)
    assert result["token_type"] == "Bearer" and result["expires_in"] == 3600
    answer = httpx.get(f"{fake.api_url}/subscriptions", headers={"Authorization": f"Bearer {result['access_token']}"})
    assert answer.status_code == 200 and answer.json()["value"] == []
    assert [(r.path, r.client_id) for r in fake.requests if r.method == "POST"] == [
        (f"/{TENANT}/oauth2/v2.0/token", CLIENT)
    ]


@pytest.mark.parametrize("form", ["thumbprint", "public_certificate"])
def test_msal_gets_a_token_with_a_certificate(make_fake: MakeFake, form: str) -> None:
    """msal signs RS256 with ``x5t`` given the SHA-1 thumbprint, PS256 with ``x5t#S256`` given the certificate."""
    certificate = ClientCertificate.make()
    fake = make_fake(App(TENANT, CLIENT, certificate_pem=certificate.certificate_pem))
    credential = {"private_key": certificate.private_key_pem.decode()}
    if form == "thumbprint":
        credential["thumbprint"] = certificate.sha1_thumbprint
    else:
        credential["public_certificate"] = certificate.certificate_pem.decode()
    assert "access_token" in msal_token(fake, credential)

    stranger = ClientCertificate.make()
    refused = msal_token(
        fake, {"private_key": stranger.private_key_pem.decode(), "thumbprint": stranger.sha1_thumbprint}
    )
    assert refused["error"] == "invalid_client" and refused["error_codes"] == [700027]


def test_a_wrong_secret_is_refused_with_aadsts7000215(fake: FakeGraph) -> None:
    result = msal_token(fake, "not-the-secret")
    assert "access_token" not in result
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]
    assert result["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")


def test_unknown_tenant_unknown_client_and_a_revoked_app_are_refused(fake: FakeGraph) -> None:
    unknown_tenant = token_request(fake, tenant="nowhere", client_id=CLIENT, client_secret=SECRET)
    assert unknown_tenant.status_code == 400 and unknown_tenant.json()["error_codes"] == [90002]
    assert httpx.get(f"{fake.authority_url}/nowhere/v2.0/.well-known/openid-configuration").status_code == 400
    unknown_client = token_request(fake, client_id="someone-else", client_secret=SECRET)
    assert unknown_client.status_code == 400 and unknown_client.json()["error_codes"] == [700016]

    token = token_request(fake, client_id=CLIENT, client_secret=SECRET).json()["access_token"]
    fake.revoke(CLIENT)
    revoked = token_request(fake, client_id=CLIENT, client_secret=SECRET)
    assert revoked.status_code == 401 and revoked.json()["error"] == "invalid_client"
    old_token = httpx.get(f"{fake.api_url}/subscriptions", headers={"Authorization": f"Bearer {token}"})
    assert old_token.status_code == 401 and error_code(old_token) == "InvalidAuthenticationToken"
    fake.restore(CLIENT)
    assert token_request(fake, client_id=CLIENT, client_secret=SECRET).status_code == 200


def test_graph_wants_a_valid_bearer(fake: FakeGraph) -> None:
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer made-up"}):
        answer = httpx.get(f"{fake.api_url}/subscriptions", headers=headers)
        assert answer.status_code == 401, headers
        assert error_code(answer) == "InvalidAuthenticationToken"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_an_expired_access_token_is_refused(make_fake: MakeFake) -> None:
    fake = make_fake(token_seconds=1)
    token = token_request(fake, client_id=CLIENT, client_secret=SECRET).json()["access_token"]
    time.sleep(1.1)
    answer = httpx.get(f"{fake.api_url}/subscriptions", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401 and "expired" in answer.json()["error"]["message"]


# -- subscriptions ----------------------------------------------------------------------------------------------


def test_create_does_the_handshake_on_both_urls_and_caps_the_lifetime(
    fake: FakeGraph, graph: httpx.Client, receiver: Receiver
) -> None:
    before = datetime.now(UTC)
    created = create(graph, receiver)

    paths = [(v.path, v.query["tenant"]) for v in receiver.validations()]
    assert paths == [("/api/webhooks/graph", ["contoso"]), ("/api/webhooks/graph/lifecycle", ["contoso"])]
    for validation in receiver.validations():
        (token,) = validation.query["validationToken"]
        assert token.startswith("Validation: Testing client application reachability for subscription Request-Id: ")
        assert validation.content_type == "text/plain; charset=utf-8"
    expires = datetime.fromisoformat(created["expirationDateTime"])
    assert before + timedelta(seconds=89) <= expires <= datetime.now(UTC) + timedelta(seconds=90)
    assert created["resource"] == f"users/{ROOM}/events" and created["applicationId"] == CLIENT
    kept = fake.subscriptions[created["id"]]
    assert (kept.client_state, kept.directory_tenant_id, kept.expires_at) == (CLIENT_STATE, TENANT, expires)
    assert graph.get(f"/subscriptions/{created['id']}").json()["id"] == created["id"]
    assert [s["id"] for s in graph.get("/subscriptions").json()["value"]] == [created["id"]]


def test_requests_are_served_while_a_handshake_waits(fake: FakeGraph, graph: httpx.Client, receiver: Receiver) -> None:
    seen: list[int] = []
    authorization = graph.headers["Authorization"]

    def ask_graph() -> None:
        with httpx.Client(timeout=5) as other:
            seen.append(
                other.get(f"{fake.api_url}/subscriptions", headers={"Authorization": authorization}).status_code
            )

    receiver.during_validation = ask_graph
    create(graph, receiver)
    assert seen == [200, 200]


def test_no_lifecycle_url_no_lifecycle_events(fake: FakeGraph, graph: httpx.Client, receiver: Receiver) -> None:
    created = create(graph, receiver, lifecycleNotificationUrl=None)
    assert [v.path for v in receiver.validations()] == ["/api/webhooks/graph"]
    assert fake.missed(created["id"]) is None and fake.remove(created["id"]) is None
    assert receiver.posts() == [] and fake.subscriptions == {}


def test_a_shorter_lifetime_asked_is_granted_as_asked(graph: httpx.Client, receiver: Receiver) -> None:
    asked = (datetime.now(UTC) + timedelta(seconds=30)).replace(microsecond=0)
    created = create(graph, receiver, expires=asked.isoformat().replace("+00:00", "Z"))
    assert datetime.fromisoformat(created["expirationDateTime"]) == asked


@pytest.mark.parametrize(
    ("answer", "message"),
    [("wrong", "Response must exactly match validationToken"), ("error", "must respond with 200 OK")],
)
def test_a_failed_handshake_creates_nothing(
    fake: FakeGraph, graph: httpx.Client, receiver: Receiver, answer: str, message: str
) -> None:
    receiver.answer = answer
    response = graph.post("/subscriptions", json=subscription(receiver))
    assert response.status_code == 400
    assert error_code(response) == "ValidationError" and message in response.json()["error"]["message"]
    assert fake.subscriptions == {}


def test_an_unreachable_notification_url_fails_the_handshake(fake: FakeGraph, graph: httpx.Client) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gone = Receiver(url=f"http://127.0.0.1:{port}")  # nobody listens there
    response = graph.post("/subscriptions", json=subscription(gone))
    assert response.status_code == 400 and error_code(response) == "ValidationError"


def test_a_second_subscription_on_the_same_resource_is_409(
    fake: FakeGraph, graph: httpx.Client, receiver: Receiver
) -> None:
    first = create(graph, receiver)
    again = graph.post("/subscriptions", json=subscription(receiver, mailbox=ROOM.upper()))
    assert again.status_code == 409
    assert (
        again.json()["error"]["message"]
        == f"Subscription Id {first['id']} already exists for the requested combination"
    )
    other_room = create(graph, receiver, mailbox="room-b204@contoso.example")
    assert set(fake.subscriptions) == {first["id"], other_room["id"]}


def test_permission_and_access_policy_give_403(make_fake: MakeFake, receiver: Receiver) -> None:
    fake = make_fake(
        App(TENANT, CLIENT, SECRET, mailboxes={ROOM}),
        App(TENANT, "no-consent", "other-secret", permission=False),
    )
    for client_id, secret, mailbox, status in (
        (CLIENT, SECRET, ROOM, 201),
        (CLIENT, SECRET, "ceo@contoso.example", 403),
        ("no-consent", "other-secret", ROOM, 403),
    ):
        token = token_request(fake, client_id=client_id, client_secret=secret).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        answer = httpx.post(f"{fake.api_url}/subscriptions", json=subscription(receiver, mailbox), headers=headers)
        assert answer.status_code == status, (client_id, mailbox, answer.text)
        if status == 403:
            assert error_code(answer) == "ErrorAccessDenied"


def test_a_resource_other_than_room_events_is_400(graph: httpx.Client, receiver: Receiver) -> None:
    answer = graph.post("/subscriptions", json=subscription(receiver, resource=f"users/{ROOM}/messages"))
    assert answer.status_code == 400 and receiver.validations() == []


def test_renew_reauthorize_and_delete(fake: FakeGraph, graph: httpx.Client, receiver: Receiver) -> None:
    created = create(graph, receiver, expires=(datetime.now(UTC) + timedelta(seconds=20)).isoformat())
    assert fake.reauthorization_required(created["id"]) == 202
    assert fake.subscriptions[created["id"]].needs_reauthorization

    reauthorized = graph.post(f"/subscriptions/{created['id']}/reauthorize")
    assert reauthorized.status_code == 204
    kept = fake.subscriptions[created["id"]]
    assert (kept.reauthorizations, kept.needs_reauthorization) == (1, False)

    renewed = graph.patch(f"/subscriptions/{created['id']}", json={"expirationDateTime": FAR})
    assert renewed.status_code == 200
    assert renewed.json()["expirationDateTime"] > created["expirationDateTime"]
    assert fake.subscriptions[created["id"]].renewals == 1

    assert graph.delete(f"/subscriptions/{created['id']}").status_code == 204
    assert fake.subscriptions == {} and fake.expired == []
    assert graph.get("/subscriptions").json()["value"] == []


def test_a_forgotten_subscription_is_404(fake: FakeGraph, graph: httpx.Client, receiver: Receiver) -> None:
    created = create(graph, receiver)
    fake.forget(created["id"])
    path = f"/subscriptions/{created['id']}"
    for answer in (
        graph.get(path),
        graph.patch(path, json={"expirationDateTime": FAR}),
        graph.delete(path),
        graph.post(f"{path}/reauthorize"),
    ):
        assert answer.status_code == 404 and error_code(answer) == "ResourceNotFound"
    assert receiver.posts() == []  # Graph says nothing when it loses one
    assert create(graph, receiver)["id"] != created["id"]  # and the resource is free again


def test_fail_next_answers_429_with_retry_after_then_serves(
    fake: FakeGraph, graph: httpx.Client, receiver: Receiver
) -> None:
    created = create(graph, receiver)
    fake.fail_next("PATCH", "/subscriptions/", status=429, retry_after=7, count=2)
    path = f"/subscriptions/{created['id']}"
    for _ in range(2):
        throttled = graph.patch(path, json={"expirationDateTime": FAR})
        assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "7"
        assert error_code(throttled) == "TooManyRequests"
    assert graph.get(path).status_code == 200  # another method is not affected
    assert graph.patch(path, json={"expirationDateTime": FAR}).status_code == 200
    assert fake.subscriptions[created["id"]].renewals == 1


def test_an_injected_404_on_renewal_loses_the_subscription(
    fake: FakeGraph, graph: httpx.Client, receiver: Receiver
) -> None:
    created = create(graph, receiver)
    fake.fail_next("PATCH", status=404, retry_after=None)
    assert graph.patch(f"/subscriptions/{created['id']}", json={"expirationDateTime": FAR}).status_code == 404
    assert fake.subscriptions == {}
    create(graph, receiver)  # re-creating works: no 409 from a ghost


def test_the_reaper_drops_expired_subscriptions(make_fake: MakeFake, receiver: Receiver) -> None:
    fake = make_fake(lifetime_seconds=1.0)
    token = token_request(fake, client_id=CLIENT, client_secret=SECRET).json()["access_token"]
    with httpx.Client(base_url=fake.api_url, headers={"Authorization": f"Bearer {token}"}) as graph:
        created = create(graph, receiver)
        assert created["id"] in fake.subscriptions
        assert fake.wait_for(lambda: fake.subscriptions == {}, timeout=5)
        assert [s.id for s in fake.expired] == [created["id"]]
        assert graph.get(f"/subscriptions/{created['id']}").status_code == 404


# -- what it posts ----------------------------------------------------------------------------------------------


def test_notifications_and_lifecycle_events_have_the_samples_shape(
    fake: FakeGraph, graph: httpx.Client, receiver: Receiver
) -> None:
    created = create(graph, receiver)
    sub = fake.subscriptions[created["id"]]
    assert fake.notify(sub.id, "updated", event_id="AAMkADevent1", etag='W/"v2"') == 202
    assert fake.notify(sub.id, "deleted") == 202
    assert fake.missed(sub.id) == 202
    assert fake.remove(sub.id) == 202
    assert fake.subscriptions == {}

    posted = [(r.path, json.loads(r.body)) for r in receiver.received if "validationToken" not in r.query]
    assert [path for path, _ in posted] == ["/api/webhooks/graph"] * 2 + ["/api/webhooks/graph/lifecycle"] * 2
    (updated,), (deleted,), (missed,), (removed,) = (body["value"] for _, body in posted)
    assert updated.keys() == items("03")[0].keys()
    assert updated["resourceData"].keys() == items("03")[0]["resourceData"].keys()
    assert updated["resource"] == f"Users/{ROOM}/Events/AAMkADevent1"
    assert updated["resourceData"]["@odata.etag"] == 'W/"v2"'
    assert "@odata.etag" not in deleted["resourceData"] and deleted["changeType"] == "deleted"
    assert missed.keys() == items("10")[0].keys() and missed["lifecycleEvent"] == "missed"
    assert removed["lifecycleEvent"] == "subscriptionRemoved"
    for item in (updated, deleted, missed, removed):
        assert (item["subscriptionId"], item["clientState"], item["tenantId"]) == (sub.id, CLIENT_STATE, TENANT)
        assert datetime.fromisoformat(item["subscriptionExpirationDateTime"]) == sub.expires_at
    assert all(r.content_type == "application/json" for r in receiver.received if "validationToken" not in r.query)


# -- the control API: /fake/subscriptions and /fake/deliver ----------------------------------------------------


def test_fake_deliver_fills_in_what_graph_fills_and_posts_to_each_subscriptions_url(
    fake: FakeGraph, graph: httpx.Client, receiver: Receiver
) -> None:
    ids = [
        create(graph, receiver)["id"],
        create(graph, receiver, resource="users/room-b2@contoso.example/events")["id"],
    ]
    first, second = (fake.subscriptions[sub_id] for sub_id in ids)
    (listed,) = [s for s in httpx.get(f"{fake.url}/fake/subscriptions").json()["value"] if s["id"] == first.id]
    assert listed["mailbox"] == ROOM and listed["tenantId"] == TENANT and "clientState" not in listed
    assert listed["notificationUrl"] == f"{receiver.url}/api/webhooks/graph?tenant=contoso"
    assert datetime.fromisoformat(listed["expirationDateTime"]) == first.expires_at

    def change(sub_id: str, event: str) -> dict[str, Any]:
        resource = f"Users/{ROOM}/Events/{event}"
        data = {"@odata.type": "#Microsoft.Graph.Event", "@odata.id": resource, "id": event}
        return {"subscriptionId": sub_id, "changeType": "created", "resource": resource, "resourceData": data}

    lifecycle = {"subscriptionId": second.id, "lifecycleEvent": "missed", "clientState": "forged"}
    body = {"value": [change(first.id, "AAMkADe1"), lifecycle, change(second.id, "AAMkADe2")]}
    before = len(receiver.received)
    assert httpx.post(f"{fake.url}/fake/deliver", json=body).status_code == 202
    posted = {(r.path, r.query["tenant"][0]): json.loads(r.body)["value"] for r in receiver.received[before:]}
    assert [i["resource"] for i in posted["/api/webhooks/graph", "contoso"]] == [
        f"Users/{ROOM}/Events/AAMkADe1",
        f"Users/{ROOM}/Events/AAMkADe2",
    ], "one POST per URL, the items in their order"
    (missed,) = posted["/api/webhooks/graph/lifecycle", "contoso"]
    for item in (*posted["/api/webhooks/graph", "contoso"], missed):
        sub = first if item["subscriptionId"] == first.id else second
        assert (item["clientState"], item["tenantId"]) == (CLIENT_STATE, TENANT)
        assert datetime.fromisoformat(item["subscriptionExpirationDateTime"]) == sub.expires_at

    unknown = httpx.post(f"{fake.url}/fake/deliver", json={"value": [change("no-such-id", "AAMkADe3")]})
    assert unknown.status_code == 404 and "no-such-id" in unknown.json()["error"]["message"]
    assert httpx.post(f"{fake.url}/fake/deliver", content=b"[]").status_code == 400
    assert len(receiver.received) == before + 2, "nothing posted for a refused body"


# -- syncnotify graph fake ----------------------------------------------------------------------------------------


def test_serve_says_the_environment_then_stops_on_sigterm(tmp_path: Path) -> None:
    lines: list[str] = []
    reached: list[int] = []

    def variables() -> dict[str, str]:
        return dict(line.split("=", 1) for line in lines if not line.startswith("#"))

    def say(line: str) -> None:
        lines.append(line)
        if line.startswith("# fake Microsoft Graph on"):  # serving: try the lines said, then stop it
            said = variables()
            trust = ssl.create_default_context(cafile=said["SSL_CERT_FILE"])
            openid = f"{said['SYNCNOTIFY_GRAPH_AUTHORITY_URL']}/{TENANT}/v2.0/.well-known/openid-configuration"
            reached.append(httpx.get(openid, verify=trust).status_code)
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()

    before = signal.getsignal(signal.SIGTERM)
    serve(0, 60.0, App(TENANT, CLIENT, SECRET), tmp_path, say)
    said = variables()
    assert set(said) == {
        "SYNCNOTIFY_GRAPH_API_URL",
        "SYNCNOTIFY_GRAPH_AUTHORITY_URL",
        "SYNCNOTIFY_GRAPH_DIRECTORY_TENANT_ID",
        "SYNCNOTIFY_GRAPH_CLIENT_ID",
        "SYNCNOTIFY_GRAPH_CLIENT_SECRET",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
    }
    assert said["SYNCNOTIFY_GRAPH_API_URL"] == said["SYNCNOTIFY_GRAPH_AUTHORITY_URL"] + "/v1.0"
    assert said["SSL_CERT_FILE"] == str(tmp_path / "ca.pem")
    assert (said["SYNCNOTIFY_GRAPH_CLIENT_ID"], said["SYNCNOTIFY_GRAPH_CLIENT_SECRET"]) == (CLIENT, SECRET)
    assert reached == [200]
    assert lines[-1].startswith("# stopped: 0 live subscriptions")
    assert signal.getsignal(signal.SIGTERM) is before
