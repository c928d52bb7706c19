"""transcript segments with a full-text index

Revision ID: 0003
Revises: 0002

Transcripts become searchable: segments with Arabic-normalised text, and a full-text index
that each dialect does its own way (FTS5 on SQLite, tsvector + GIN on PostgreSQL).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "transcript_segments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("start_s", sa.Float(), nullable=False),
        sa.Column("end_s", sa.Float(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("normalised", sa.Text(), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_id"], ["results.id"], name=op.f("fk_transcript_segments_result_id_results")
        ),
        sa.ForeignKeyConstraint(
            ["sha256"], ["items.sha256"], name=op.f("fk_transcript_segments_sha256_items")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transcript_segments")),
    )
    with op.batch_alter_table("transcript_segments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_transcript_segments_result_id"), ["result_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_transcript_segments_sha256"), ["sha256"], unique=False)
    op.create_table(
        "transcripts_indexed",
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_id"], ["results.id"], name=op.f("fk_transcripts_indexed_result_id_results")
        ),
        sa.PrimaryKeyConstraint("result_id", name=op.f("pk_transcripts_indexed")),
    )
    if op.get_bind().dialect.name == "sqlite":
        # Contentless: the text lives in transcript_segments; rowid is the segment id.
        op.execute("CREATE VIRTUAL TABLE transcript_fts USING fts5(normalised, content='')")
    else:
        op.execute(
            "ALTER TABLE transcript_segments ADD COLUMN search_vector tsvector"
            " GENERATED ALWAYS AS (to_tsvector('simple', normalised)) STORED"
        )
        op.execute(
            "CREATE INDEX ix_transcript_segments_search ON transcript_segments"
            " USING gin (search_vector)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE transcript_fts")
    op.drop_table("transcripts_indexed")
    with op.batch_alter_table("transcript_segments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transcript_segments_sha256"))
        batch_op.drop_index(batch_op.f("ix_transcript_segments_result_id"))
    op.drop_table("transcript_segments")
