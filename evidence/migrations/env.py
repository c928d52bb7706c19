"""Alembic environment: always run on a connection handed in by `evidence.db.migrate`."""

from alembic import context

from evidence.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
