"""``syncnotify simulate --graph --via FAKE_URL``: the subscriptions ``syncnotify graph subscribe`` made at the fake
Graph are the rooms, the fake fills in their clientState and posts to the real ingress and worker, and the
check finds every change once, in order, under the fake's subscription ids — on both databases."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from shared.schema import make_engine, notifications
from syncnotify.fakegraph import App, FakeGraph
from syncnotify.redis_server import EmbeddedRedis, free_port
from tests.processes import run, service, service_env

APP = App("dir-via", "app-via", client_secret="via-secret-9Tq2")
ROOMS = [f"room-{n}@example.com" for n in range(1, 6)]
TENANT = "contoso"


def test_simulate_posts_through_the_fakes_subscriptions(
    redis_server: EmbeddedRedis, database_url: str, tmp_path: Path
) -> None:
    with FakeGraph(lifetime_seconds=3600, ca_dir=tmp_path / "ca") as fake:
        fake.add_app(APP)
        port = free_port()
        env = service_env(
            redis_server.url,
            database_url,
            tmp_path,
            SYNCNOTIFY_TENANTS=f"Default,{TENANT}",
            SYNCNOTIFY_GRAPH_CLIENT_STATE="via-state-Lm5Vt8Xp",
            SYNCNOTIFY_GRAPH_DIRECTORY_TENANT_ID=APP.directory_tenant_id,
            SYNCNOTIFY_GRAPH_CLIENT_ID=APP.client_id,
            SYNCNOTIFY_GRAPH_CLIENT_SECRET=APP.client_secret or "",
            SYNCNOTIFY_GRAPH_API_URL=fake.api_url,
            SYNCNOTIFY_GRAPH_AUTHORITY_URL=fake.authority_url,
            SYNCNOTIFY_PUBLIC_URL=f"http://127.0.0.1:{port}",
            SYNCNOTIFY_GRAPH_UPKEEP_SECONDS="600",
            SSL_CERT_FILE=str(fake.ca_file),
            REQUESTS_CA_BUNDLE=str(fake.ca_file),
        )
        simulate = ["simulate", "--graph", "--via", fake.url, "--notifications", "200", "--progress-every", "0"]
        with service(env, tmp_path, workers=1, port=port):
            none_yet = run(simulate, env, tmp_path)
            assert none_yet.returncode == 2 and "subscribe rooms first" in none_yet.stderr, none_yet.stderr

            for room in ROOMS:
                subscribed = run(["graph", "subscribe", "--tenant", TENANT, room], env, tmp_path)
                assert subscribed.returncode == 0, subscribed.stdout + subscribed.stderr
            result = run([*simulate, "--verify", database_url, "--json"], env, tmp_path, timeout=120)
            assert result.returncode == 0, result.stdout + result.stderr
        at_fake, deliver = set(fake.subscriptions), f"{fake.url}/fake/deliver"

    report = json.loads(result.stdout)
    verify = report["verify"]
    assert report["ok"] and report["acknowledged"] == report["planned"] == 200, report
    assert report["url"] == deliver
    assert verify["subscriptions"] == 5 and verify["stored_rows"] == verify["expected_rows"] == 200, verify
    assert (verify["lost"], verify["duplicated"], verify["seq_broken"]) == (0, 0, 0), verify
    engine = make_engine(database_url)
    with engine.connect() as conn:
        stored = {
            (r.tenant, r.subscription_id)
            for r in conn.execute(select(notifications.c.tenant, notifications.c.subscription_id))
        }
    engine.dispose()
    assert stored == {(TENANT, sub_id) for sub_id in at_fake} and len(at_fake) == 5
