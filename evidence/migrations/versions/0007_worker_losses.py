"""worker losses counted apart from attempts

Revision ID: 0007
Revises: 0006

A worker process that dies under a job (killed from outside, its node lost, or a crash inside
the worker) says little about the job: any job of its batch, or none, may have been the cause.
A loss under a batch counts against nothing, and the job runs alone next; a loss while the job
ran alone counts here, against a budget of its own (`jobs.MAX_WORKER_LOSSES`), so that workers
killed from outside do not use up a job's attempts while a file that takes its worker down
every time still ends.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("worker_losses", sa.Integer, nullable=False, server_default="0")
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("worker_losses")
