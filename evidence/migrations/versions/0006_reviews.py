"""reviews

Revision ID: 0006
Revises: 0005

Reviewers' labels on items (graphic, reviewed, not-relevant), each recorded by a custody
event; the label covers the item's near-duplicate cluster, which is read from `matches`.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=32), nullable=False),
        sa.Column("reviewer", sa.String(length=200), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("custody_seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["custody_seq"],
            ["custody_events.seq"],
            name=op.f("fk_reviews_custody_seq_custody_events"),
        ),
        sa.ForeignKeyConstraint(["sha256"], ["items.sha256"], name=op.f("fk_reviews_sha256_items")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
    )
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reviews_sha256"), ["sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reviews_sha256"))
    op.drop_table("reviews")
