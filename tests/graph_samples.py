"""The Graph samples (tests/samples/graph, from ../shared/samples/graph) and their shared invented values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GRAPH_SAMPLES = Path(__file__).parent / "samples" / "graph"
CLIENT_STATE = "sn-rooms-Zq7u3Wk9Xp2Lm5Vt8Rb4"
APP_ID = "c4e1b7d2-9a35-4f60-b8d1-2e7a90f3c615"
TENANT_ID = "5d1c7e0a-3b6f-4a92-8e41-0a7f3c9b2d18"
ROOM_A = "2b9e6f14-8c3d-4a71-9e05-d7c4a1f6b382"  # the subscriptions of rooms A-101 and B-204
ROOM_B = "71c0d8a3-5e29-4f6b-8a14-3b9e2c7d0f55"
TOKEN = (
    "Validation: Testing client application reachability for subscription"
    " Request-Id: 4e0c9a7b-2d61-4f38-b5a9-c17e3d08f6a2"
)
JSON = {"Content-Type": "application/json; charset=utf-8"}


def sample(name: str) -> bytes:
    """A sample's bytes by its number or file name (``"02"`` or ``"02-event-created.json"``)."""
    (path,) = GRAPH_SAMPLES.glob(f"{name}*.json")
    return path.read_bytes()


def items(name: str) -> list[dict[str, Any]]:
    value: list[dict[str, Any]] = json.loads(sample(name))["value"]
    return value


def body(*value: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"value": list(value), **extra}).encode()
