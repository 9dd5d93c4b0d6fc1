"""The benchmark's table (figure, baseline, ratio, target) as text for the terminal and markdown for RESULTS.md."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Figure:
    """One line of the table.  ``met`` is ``None`` for a figure without a target."""

    section: str
    name: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None

    @property
    def verdict(self) -> str:
        return "" if self.met is None else ("met" if self.met else "MISSED")


def number(value: float, unit: str = "", digits: int = 0) -> str:
    return f"{value:,.{digits}f}{(' ' + unit) if unit else ''}"


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}×" if baseline else "–"


_COLUMNS = ("figure", "value", "baseline (same run)", "ratio", "target", "")


def _cells(figure: Figure) -> tuple[str, ...]:
    return (figure.name, figure.value, figure.baseline, figure.ratio, figure.target, figure.verdict)


def text_table(figures: Sequence[Figure]) -> str:
    """A fixed-width table, one block per section."""
    widths = [max(len(c), *(len(_cells(f)[i]) for f in figures)) for i, c in enumerate(_COLUMNS)]
    lines = []
    section = None
    for figure in figures:
        if figure.section != section:
            section = figure.section
            lines.append("")
            lines.append(f"== {section}")
            lines.append("  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths, strict=True)).rstrip())
        lines.append("  ".join(c.ljust(w) for c, w in zip(_cells(figure), widths, strict=True)).rstrip())
    return "\n".join(lines)


def markdown_table(figures: Sequence[Figure]) -> str:
    lines = []
    section = None
    for figure in figures:
        if figure.section != section:
            section = figure.section
            lines += ["", f"#### {section}", "", "| " + " | ".join(_COLUMNS) + " |", "|---" * len(_COLUMNS) + "|"]
        cells = list(_cells(figure))
        cells[-1] = "✅ met" if figure.met else ("❌ **missed**" if figure.met is False else "")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _first_line(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else "?"


def machine(redis_version: str, postgres_version: str) -> dict[str, str]:
    """What the figures were measured on."""
    memory = "?"
    cpu = "?"
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))  # type: ignore[union-attr]
        memory = f"{kib / 1024 / 1024:.1f} GiB"
        cpuinfo = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo)
        cpu = found.group(1).strip() if found else platform.processor() or "?"
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus (nproc)": str(os.cpu_count()),
        "cpu": cpu,
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": redis_version,
        "postgresql": postgres_version,
        "wrk": _first_line(["wrk", "--version"]).split(" Copyright")[0] if _has("wrk") else "not installed",
        "commit": _first_line(["git", "rev-parse", "--short", "HEAD"])
        + (
            " + uncommitted changes"
            if _first_line(["git", "status", "--porcelain", "--untracked-files=no"]) != "?"
            else ""
        ),
    }


def _has(program: str) -> bool:
    from shutil import which

    return which(program) is not None


def markdown_section(
    mode: str, command: str, about: dict[str, str], figures: Sequence[Figure], notes: Sequence[str]
) -> str:
    head = [
        f"### {mode} run",
        "",
        f"Command: `{command}`",
        "",
        " · ".join(f"{k}: {v}" for k, v in about.items()),
    ]
    tail = ["", *(f"- {n}" for n in notes)] if notes else []
    return "\n".join(head) + "\n" + markdown_table(figures) + "\n" + "\n".join(tail) + "\n"


def write_section(path: Path, mode: str, section: str) -> None:
    """Replace the ``mode`` section of ``path`` between its markers (appending it if absent)."""
    begin, end = f"<!-- bench:{mode}:begin -->", f"<!-- bench:{mode}:end -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{begin}\n{section}{end}"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
