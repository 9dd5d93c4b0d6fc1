"""The exception tree: catch ``SyncNotifyError`` for everything the project raises itself.

``PermanentError`` means the payload itself is at fault and retrying cannot help: it goes straight to the
dead-letter queue.  ``TransientError`` means the world was at fault (database or Redis away, a lock held too
long): RQ retries the job with backoff and dead-letters it only when the retries are spent.
"""

from __future__ import annotations


class SyncNotifyError(Exception):
    """Base of every error syncnotify raises on purpose."""


class ConfigError(SyncNotifyError):
    """A setting has a value that cannot be used; the message names the variable and the value."""


class PermanentError(SyncNotifyError):
    """A payload that can never be stored as it is.

    ``error_class`` is a short stable name operators filter the dead-letter queue by
    (``not_xml``, ``malformed_xml``, ``dtd_forbidden``, ``not_send_notification``,
    ``no_subscription_id``, ``unknown_structure``, ``bad_value``).
    """

    error_class = "unknown_structure"

    def __init__(self, message: str, error_class: str | None = None) -> None:
        super().__init__(message)
        if error_class is not None:
            self.error_class = error_class


class TransientError(SyncNotifyError):
    """A failure of the surroundings (database, Redis) that a later attempt may not meet."""


class SpoolError(SyncNotifyError):
    """The local spool could not store a payload durably."""
