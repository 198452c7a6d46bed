"""Prediction stores: one interface (``base.Store``), an embedded SQLite file or a shared PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from service.monitoring.store.base import Store

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(target: str) -> bool:
    return target.startswith(POSTGRES_SCHEMES)


def open_store(target: Path | str) -> Store:
    """A SQLite store for a path, a PostgreSQL store for a ``postgresql://`` URL (psycopg imported only then,
    so the embedded default needs nothing beyond the standard library)."""
    if isinstance(target, str) and is_postgres_url(target):
        from service.monitoring.store.postgres import PostgresStore

        return PostgresStore(target)
    from service.monitoring.store.sqlite import SQLiteStore

    return SQLiteStore(Path(target))
