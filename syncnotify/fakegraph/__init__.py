"""A fake Microsoft Graph and token authority over HTTPS, for the tests, ``syncnotify simulate --graph`` and
``syncnotify graph fake``: subscriptions with the real validation handshake, short lifetimes, lifecycle events,
faults on demand (SPEC §10, GRAPH.md §1, §4, §6, §8)."""

from syncnotify.fakegraph.fake import FakeGraph
from syncnotify.fakegraph.state import App, FakeSubscription, Logged
from syncnotify.fakegraph.tls import ClientCertificate

__all__ = ["App", "ClientCertificate", "FakeGraph", "FakeSubscription", "Logged"]
