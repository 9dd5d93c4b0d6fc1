"""How commands print: one JSON document, an aligned table, progress on stderr."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

from syncnotify.wording import ago

if TYPE_CHECKING:
    from syncnotify.dlq import ReplayOutcome

__all__ = ["Progress", "ago", "plural", "print_json", "table"]


def print_json(document: object) -> None:
    """``document`` as the one JSON document on stdout (``--json``)."""
    json.dump(document, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def table(rows: list[list[str]], header: list[str]) -> None:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def plural(count: int, one: str, many: str) -> str:
    """``'1 entry'``, ``'5 entries'``."""
    return f"{count} {one if count == 1 else many}"


class Progress:
    """One line on stderr, written at most once a second, for long runs (a replay of 100,000 entries)."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.started = self.shown = time.monotonic()

    def __call__(self, outcome: ReplayOutcome) -> None:
        now = time.monotonic()
        if now - self.shown >= 1:
            self.shown = now
            rate = outcome.replayed / max(now - self.started, 1e-9)
            print(
                f"{self.verb}: {outcome.replayed} replayed ({rate:.0f}/s), {outcome.stored} stored, "
                f"{outcome.failed_again} failed again",
                file=sys.stderr,
                flush=True,
            )
