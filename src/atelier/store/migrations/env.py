"""Alembic environment. Runs on a connection handed in by :mod:`atelier.store.db`."""

from __future__ import annotations

from alembic import context

from atelier.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only used through atelier.store.db
    raise RuntimeError("run migrations through atelier.store.db.Database.migrate()")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
