"""requests, controls, idempotent intake, archive members

Revision ID: 0005
Revises: 0004

The store becomes what a running service and its operators steer: requests with a priority
and a deadline, a pause switch every driver reads, an intake key that makes a drop folder's
file (or an archive member) arrive once however often intake is retried, and the members
found inside archive items.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("acquisitions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("intake_key", sa.String(length=300), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_acquisitions_intake_key"), ["intake_key"])
    op.create_table(
        "requests",
        sa.Column("ref", sa.String(length=200), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ref", name=op.f("pk_requests")),
    )
    op.create_table(
        "controls",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_controls")),
    )
    op.create_table(
        "archive_members",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("archive_sha256", sa.String(length=64), nullable=False),
        sa.Column("member_sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.LargeBinary(), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["archive_sha256"],
            ["items.sha256"],
            name=op.f("fk_archive_members_archive_sha256_items"),
        ),
        sa.ForeignKeyConstraint(
            ["member_sha256"], ["items.sha256"], name=op.f("fk_archive_members_member_sha256_items")
        ),
        sa.ForeignKeyConstraint(
            ["result_id"], ["results.id"], name=op.f("fk_archive_members_result_id_results")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_archive_members")),
        sa.UniqueConstraint(
            "archive_sha256", "path", name=op.f("uq_archive_members_archive_sha256_path")
        ),
    )
    with op.batch_alter_table("archive_members", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_archive_members_member_sha256"), ["member_sha256"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("archive_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_archive_members_member_sha256"))
    op.drop_table("archive_members")
    op.drop_table("controls")
    op.drop_table("requests")
    with op.batch_alter_table("acquisitions", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_acquisitions_intake_key"), type_="unique")
        batch_op.drop_column("intake_key")
