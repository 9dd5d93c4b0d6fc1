"""The status page as HTML: ``templates/status.html`` (and its ``status.css``), rendered by Jinja2 with
autoescape on, so a subscription id, a tenant or an error message is always text, never markup.
"""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from syncnotify.admin.snapshot import Snapshot
from syncnotify.wording import ago, agree, counted, duration, until

#: The page reloads itself this often (seconds).
REFRESH_SECONDS = 10


def _num(value: int) -> str:
    return f"{value:,}"


def banner(snap: Snapshot) -> tuple[str, str]:
    """The banner's level (``ok``, ``attention`` or ``bad``) and its sentence."""
    st = snap.status
    troubles = []
    if st.workers == 0:
        troubles.append("no worker is running")
    if attention := snap.needing_attention:
        troubles.append(f"{counted(attention, 'subscription')} {agree(attention, 'needs', 'need')} attention")
    if dead := sum(st.dead_letter.values()):
        troubles.append(f"{counted(dead, 'payload')} in the dead-letter queue")
    if backlog := st.spool_backlog:
        troubles.append(f"{counted(backlog, 'payload')} {agree(backlog, 'waits', 'wait')} in the spool")
    if not troubles:
        return "ok", "All clear."
    text = "; ".join(troubles)
    return ("bad" if st.workers == 0 else "attention"), text[0].upper() + text[1:] + "."


_env = Environment(
    loader=PackageLoader("syncnotify.admin", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
)
_env.filters.update(num=_num, duration=duration)
_env.globals.update(ago=ago, agree=agree, counted=counted, until=until)


def render(snap: Snapshot, refresh: int = REFRESH_SECONDS) -> str:
    """The status page for ``snap``: a whole HTML document."""
    level, text = banner(snap)
    return _env.get_template("status.html").render(
        title="syncnotify status", refresh=refresh, snap=snap, banner_level=level, banner_text=text
    )


def render_error(what: str, refresh: int = REFRESH_SECONDS) -> str:
    """The page shown while the database or Redis cannot be read."""
    return _env.get_template("status.html").render(
        title="syncnotify status: unavailable", refresh=refresh, snap=None, error=what
    )
