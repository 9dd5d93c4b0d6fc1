"""``syncnotify graph …`` as an operator runs it, against the fake Graph and a real ingress and worker, on both
databases: ``check`` naming what is wrong in one line, idempotent ``subscribe``, ``renew``, ``unsubscribe``,
``list``, and several ROOMS tenants from the tenants file — one tenant's revoked app stopping nobody else's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.schema import make_engine, notifications
from syncnotify.fakegraph import App, FakeGraph
from syncnotify.redis_server import EmbeddedRedis, free_port
from syncnotify.simulator.graph_payloads import etag, event_id
from tests.processes import run, service, service_env, wait_for

ROOM = "room-a101@example.com"
OTHER_ROOM = "room-z999@example.com"
DEFAULT_APP = App("dir-default", "app-default", client_secret="default-secret-4c1e", mailboxes={ROOM})
CONTOSO_APP = App("dir-contoso", "app-contoso", client_secret="contoso-secret-77ab")
STATES = {"Default": "default-state-Xp2Lm5Vt", "contoso": "contoso-state-Rb4Zq7u3"}


@dataclass
class Deployment:
    fake: FakeGraph
    env: dict[str, str]
    tmp: Path
    database_url: str

    def graph(self, *args: str, expect: int = 0) -> str:
        result = run(["graph", *args], self.env, self.tmp, timeout=120)
        assert result.returncode == expect, f"graph {args}: {result.returncode}\n{result.stdout}{result.stderr}"
        return result.stdout + result.stderr

    def listed(self, tenant: str) -> list[dict[str, object]]:
        rooms: list[dict[str, object]] = json.loads(self.graph("list", "--tenant", tenant, "--json"))
        return rooms


@pytest.fixture
def deployment(redis_server: EmbeddedRedis, database_url: str, tmp_path: Path) -> Iterator[Deployment]:
    fake = FakeGraph(lifetime_seconds=3600, ca_dir=tmp_path / "ca")
    fake.add_app(DEFAULT_APP)
    fake.add_app(CONTOSO_APP)
    with fake:
        port = free_port()
        tenants = tmp_path / "graph-tenants.toml"
        tenants.write_text(
            "[contoso]\n"
            f'directory_tenant_id = "{CONTOSO_APP.directory_tenant_id}"\n'
            f'client_id = "{CONTOSO_APP.client_id}"\n'
            f'client_secret = "{CONTOSO_APP.client_secret}"\n'
            f'client_state = ["{STATES["contoso"]}"]\n'
        )
        env = service_env(
            redis_server.url,
            database_url,
            tmp_path,
            SYNCNOTIFY_TENANTS="Default,contoso",
            SYNCNOTIFY_GRAPH_CLIENT_STATE=STATES["Default"],
            SYNCNOTIFY_GRAPH_DIRECTORY_TENANT_ID=DEFAULT_APP.directory_tenant_id,
            SYNCNOTIFY_GRAPH_CLIENT_ID=DEFAULT_APP.client_id,
            SYNCNOTIFY_GRAPH_CLIENT_SECRET=DEFAULT_APP.client_secret or "",
            SYNCNOTIFY_GRAPH_TENANTS_FILE=str(tenants),
            SYNCNOTIFY_GRAPH_API_URL=fake.api_url,
            SYNCNOTIFY_GRAPH_AUTHORITY_URL=fake.authority_url,
            SYNCNOTIFY_PUBLIC_URL=f"http://127.0.0.1:{port}",
            SYNCNOTIFY_GRAPH_UPKEEP_SECONDS="600",  # the commands act here, not the upkeep
            SSL_CERT_FILE=str(fake.ca_file),
            REQUESTS_CA_BUNDLE=str(fake.ca_file),
        )
        run(["db", "upgrade"], env, tmp_path)
        deployment = Deployment(fake, env, tmp_path, database_url)
        # before the ingress runs: the handshake cannot pass, and both commands say so
        down = deployment.graph("check", "--mailbox", ROOM, expect=1)
        assert "problem: the public URL http://127.0.0.1:" in down and "does not answer" in down, down
        refused = deployment.graph("subscribe", ROOM, expect=1)
        assert f"{ROOM}: not subscribed:" in refused and "SYNCNOTIFY_PUBLIC_URL" in refused, refused
        with service(env, tmp_path, workers=1, port=port):
            yield deployment


def test_check_says_what_is_wrong_in_one_line(deployment: Deployment) -> None:
    ok = deployment.graph("check", "--mailbox", ROOM)
    assert ok.count("ok: ") == 4 and "Graph subscriptions can be made and kept" in ok, ok

    policy = deployment.graph("check", "--mailbox", OTHER_ROOM, expect=1)
    assert "problem:" in policy and "access policy" in policy and OTHER_ROOM in policy, policy

    deployment.fake.add_app(App("dir-contoso", "app-contoso", client_secret="contoso-secret-77ab", permission=False))
    no_permission = deployment.graph("check", "--tenant", "contoso", "--mailbox", ROOM, expect=1)
    assert "Calendars.Read" in no_permission, no_permission

    wrong = dict(deployment.env, SYNCNOTIFY_GRAPH_CLIENT_SECRET="not-the-secret")
    result = run(["graph", "check", "--mailbox", ROOM], wrong, deployment.tmp)
    assert result.returncode == 1 and "secret is wrong" in result.stdout, result.stdout

    unset = {k: v for k, v in deployment.env.items() if k != "SYNCNOTIFY_GRAPH_CLIENT_ID"}
    result = run(["graph", "check"], unset, deployment.tmp)
    assert result.returncode == 1 and "not set: SYNCNOTIFY_GRAPH_CLIENT_ID" in result.stdout, result.stdout
    for output in (ok, policy, no_permission):
        assert DEFAULT_APP.client_secret not in output and CONTOSO_APP.client_secret not in output  # type: ignore[operator]


def test_subscribe_renew_unsubscribe_per_tenant_and_one_tenants_broken_app_stops_nobody_else(
    deployment: Deployment,
) -> None:
    fake = deployment.fake
    first = deployment.graph("subscribe", ROOM)
    assert f"{ROOM}: subscribed " in first, first
    assert f"{ROOM}: already subscribed " in deployment.graph("subscribe", ROOM)
    assert f"{ROOM}: subscribed " in deployment.graph("subscribe", ROOM, "--tenant", "contoso")
    (default_room,) = deployment.listed("Default")
    (contoso_room,) = deployment.listed("contoso")
    at_graph = fake.subscriptions
    assert at_graph[str(default_room["subscription_id"])].client_id == DEFAULT_APP.client_id
    assert at_graph[str(contoso_room["subscription_id"])].client_id == CONTOSO_APP.client_id
    assert at_graph[str(contoso_room["subscription_id"])].client_state == STATES["contoso"]
    assert "tenant=contoso" in at_graph[str(contoso_room["subscription_id"])].notification_url

    # each tenant's notifications carry its own clientState, and are stored under it
    for tenant, room in (("Default", default_room), ("contoso", contoso_room)):
        assert fake.notify(str(room["subscription_id"]), "created", event_id(tenant, 1), etag(tenant, 1, 0)) == 202
    engine = make_engine(deployment.database_url)

    def stored() -> set[tuple[str, str]]:
        with engine.connect() as conn:
            query = select(notifications.c.tenant, notifications.c.subscription_id)
            return {(r.tenant, r.subscription_id) for r in conn.execute(query)}

    expected = {("Default", str(default_room["subscription_id"])), ("contoso", str(contoso_room["subscription_id"]))}
    wait_for(lambda: stored() == expected, 30, "a row for each tenant")
    engine.dispose()

    # contoso's app is revoked: its renewal fails and says why, Default's goes on
    fake.revoke(CONTOSO_APP.client_id)
    failed = deployment.graph("renew", "--all", "--tenant", "contoso", expect=1)
    assert "failed:" in failed and "disabled" in failed, failed
    (contoso_after,) = deployment.listed("contoso")
    assert contoso_after["state"] == "renewal_failed" and "disabled" in str(contoso_after["renewal_error"])
    assert "renewed until" in deployment.graph("renew", ROOM)
    (default_after,) = deployment.listed("Default")
    assert default_after["state"] == "active" and default_after["renewal_error"] is None
    fake.restore(CONTOSO_APP.client_id)
    assert "renewed until" in deployment.graph("renew", "--all", "--tenant", "contoso")
    assert deployment.listed("contoso")[0]["state"] == "active"

    gone = deployment.graph("unsubscribe", ROOM)
    assert f"unsubscribed {default_room['subscription_id']}" in gone
    assert str(default_room["subscription_id"]) not in fake.subscriptions
    assert deployment.listed("Default")[0]["state"] == "unsubscribed"
    assert "had no live subscription" in deployment.graph("unsubscribe", ROOM)

    logs = (deployment.tmp / "services.log").read_text(errors="replace")
    for secret in (DEFAULT_APP.client_secret, CONTOSO_APP.client_secret, *STATES.values()):
        assert secret and secret not in logs
