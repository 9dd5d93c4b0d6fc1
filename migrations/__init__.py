"""Alembic migrations, run by ``syncnotify db upgrade`` (never on import)."""
