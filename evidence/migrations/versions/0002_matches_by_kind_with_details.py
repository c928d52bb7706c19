"""matches by kind, with details, stored once per pair

Revision ID: 0002
Revises: 0001

0001 created a placeholder `matches` table that nothing wrote; near-duplicate linking needs a
pair stored once per kind of match, with how it matched. The table is replaced.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("matches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_matches_b_sha256"))
        batch_op.drop_index(batch_op.f("ix_matches_a_sha256"))
    op.drop_table("matches")
    op.create_table(
        "matches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("a_sha256", sa.String(length=64), nullable=False),
        sa.Column("b_sha256", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("algorithm", sa.String(length=32), nullable=False),
        sa.Column("distance", sa.Float(), nullable=False),
        sa.Column("a_time_s", sa.Float(), nullable=True),
        sa.Column("b_time_s", sa.Float(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["a_sha256"], ["items.sha256"], name=op.f("fk_matches_a_sha256_items")
        ),
        sa.ForeignKeyConstraint(
            ["b_sha256"], ["items.sha256"], name=op.f("fk_matches_b_sha256_items")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_matches")),
        sa.UniqueConstraint(
            "a_sha256", "b_sha256", "kind", name=op.f("uq_matches_a_sha256_b_sha256_kind")
        ),
    )
    with op.batch_alter_table("matches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_matches_b_sha256"), ["b_sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("matches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_matches_b_sha256"))
    op.drop_table("matches")
    op.create_table(
        "matches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("a_sha256", sa.String(length=64), nullable=False),
        sa.Column("b_sha256", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=32), nullable=False),
        sa.Column("distance", sa.Float(), nullable=False),
        sa.Column("a_time_s", sa.Float(), nullable=True),
        sa.Column("b_time_s", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["a_sha256"], ["items.sha256"], name=op.f("fk_matches_a_sha256_items")
        ),
        sa.ForeignKeyConstraint(
            ["b_sha256"], ["items.sha256"], name=op.f("fk_matches_b_sha256_items")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_matches")),
    )
    with op.batch_alter_table("matches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_matches_a_sha256"), ["a_sha256"], unique=False)
        batch_op.create_index(batch_op.f("ix_matches_b_sha256"), ["b_sha256"], unique=False)
