"""Verified evaluation: sealed benchmarks, evaluation jobs, evaluated registrations' fields.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-01 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "benchmarks",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("token_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("label_column", sa.String(length=200), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("features", JSON, nullable=False),
        sa.Column("classes", JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["tokens.token_id"],
            name=op.f("fk_benchmarks_token_id_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_benchmarks")),
        sa.UniqueConstraint("token_id", "version", name="uq_benchmarks_token_id_version"),
    )
    op.create_table(
        "evaluation_jobs",
        sa.Column("registration_id", sa.String(length=36), nullable=False),
        sa.Column("token_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("benchmark_id", sa.String(length=36), nullable=False),
        sa.Column("benchmark_version", sa.Integer(), nullable=False),
        sa.Column("model_kind", sa.String(length=16), nullable=False),
        sa.Column("model_path", sa.String(length=512), nullable=False),
        sa.Column("request_fields", JSON, nullable=False),
        sa.Column("previous_token_status", sa.String(length=16), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["registration_id"],
            ["registrations.id"],
            name=op.f("fk_evaluation_jobs_registration_id_registrations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("registration_id", name=op.f("pk_evaluation_jobs")),
    )
    op.create_index(
        "ix_evaluation_jobs_status_created_at",
        "evaluation_jobs",
        ["status", "created_at"],
        unique=False,
    )
    with op.batch_alter_table("registrations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("metric_reported_value", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("metric_ci95", JSON, nullable=True))
        batch_op.add_column(sa.Column("evaluation", JSON, nullable=True))
        batch_op.add_column(sa.Column("receipt", JSON, nullable=True))
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("confidence", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_column("confidence")
    with op.batch_alter_table("registrations", schema=None) as batch_op:
        batch_op.drop_column("receipt")
        batch_op.drop_column("evaluation")
        batch_op.drop_column("metric_ci95")
        batch_op.drop_column("metric_reported_value")
    op.drop_index("ix_evaluation_jobs_status_created_at", table_name="evaluation_jobs")
    op.drop_table("evaluation_jobs")
    op.drop_table("benchmarks")
