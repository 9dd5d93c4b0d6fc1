"""``syncnotify graph fake``: a FakeGraph in the foreground until SIGINT or SIGTERM, saying how to point at it."""

from __future__ import annotations

import shlex
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from syncnotify.fakegraph.fake import FakeGraph
from syncnotify.fakegraph.state import App
from syncnotify.wording import counted, duration


def environment(fake: FakeGraph, app: App) -> dict[str, str]:
    """The variables that point syncnotify (and its msal and httpx) at ``fake`` as ``app``."""
    variables = {
        "SYNCNOTIFY_GRAPH_API_URL": fake.api_url,
        "SYNCNOTIFY_GRAPH_AUTHORITY_URL": fake.authority_url,
        "SYNCNOTIFY_GRAPH_DIRECTORY_TENANT_ID": app.directory_tenant_id,
        "SYNCNOTIFY_GRAPH_CLIENT_ID": app.client_id,
    }
    if app.client_secret is not None:
        variables["SYNCNOTIFY_GRAPH_CLIENT_SECRET"] = app.client_secret
    variables["SSL_CERT_FILE"] = variables["REQUESTS_CA_BUNDLE"] = str(fake.ca_file)
    return variables


def serve(port: int, lifetime_seconds: float, app: App, ca_dir: Path, say: Callable[[str], None]) -> None:
    """Serve a fake Graph on 127.0.0.1:``port`` granting ``lifetime_seconds``, with ``app`` registered.

    ``say`` gets the environment lines first (``NAME=value``, for a shell's ``export`` or a ``.env`` file), then
    one line per subscription the fake lets lapse, and a summary when it stops.
    """
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with FakeGraph(lifetime_seconds=lifetime_seconds, port=port, ca_dir=ca_dir) as fake:
            fake.add_app(app)
            for name, value in environment(fake, app).items():
                say(f"{name}={shlex.quote(value)}")
            say(f"# fake Microsoft Graph on {fake.url}: lifetime {duration(lifetime_seconds)}; Ctrl-C stops it")
            reported = 0
            while not stop.wait(1.0):
                lapsed = fake.expired
                for sub in lapsed[reported:]:
                    say(f"# subscription {sub.id} on {sub.resource} expired unrenewed at {sub.expires_at:%H:%M:%S}")
                reported = len(lapsed)
            live, lapsed = fake.subscriptions, fake.expired
            say(f"# stopped: {counted(len(live), 'live subscription')}, {len(lapsed):,} expired unrenewed")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
