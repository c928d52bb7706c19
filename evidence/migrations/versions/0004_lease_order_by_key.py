"""lease order by result key

Revision ID: 0004
Revises: 0003

Jobs are leased, and counted for status, by their full key (stage, version, config hash)
since results are keyed by what made them. The lease index gains the key's version and
config hash after the stage, so a lease is one range scan per key, and status counts jobs
per state and key from the index alone. On 110k jobs in SQLite (2 vCPU) that count took
145 ms as a scan of the table and 20 ms from this index; a whole `status` call under the
current keys takes 27 ms (`qarina bench backlog`, median of 3 runs; 22 ms before results
had keys, when it counted per stage only).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_jobs_lease_order", table_name="jobs")
    op.create_index(
        "ix_jobs_lease_order",
        "jobs",
        ["state", "stage", "stage_version", "config_hash", sa.text("priority DESC"), "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_lease_order", table_name="jobs")
    op.create_index(
        "ix_jobs_lease_order", "jobs", ["state", "stage", sa.text("priority DESC"), "id"]
    )
