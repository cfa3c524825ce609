"""Tether's metadata store: SQLModel tables, Alembic migrations and :class:`MetadataStore`."""

from tether.metadata.store import (
    MetadataStore,
    ReservationResult,
    StoredVersion,
    hash_token,
    sqlite_url,
)

__all__ = ["MetadataStore", "ReservationResult", "StoredVersion", "hash_token", "sqlite_url"]
