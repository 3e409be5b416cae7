"""The Hokusai site's payload format: endpoint format, longer secrets, the SDK's fields.

Webhook endpoints gain `payload_format` (existing ones stay `standard`) and room for a 256-character
shared secret. Registrations gain the Hokusai SDK's optional fields and the signature as JSON
Schema.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SDK_FIELDS = (
    "proposal_identifier",
    "eval_spec",
    "scorer_ref",
    "primary_metric",
    "benchmark_spec_id",
)


def upgrade() -> None:
    with op.batch_alter_table("registrations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_json_schema", JSON, nullable=True))
        for name in SDK_FIELDS:
            batch_op.add_column(sa.Column(name, sa.String(length=255), nullable=True))

    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "payload_format",
                sa.String(length=16),
                server_default="standard",
                nullable=False,
            )
        )
        batch_op.alter_column(
            "secret",
            existing_type=sa.String(length=200),
            type_=sa.String(length=256),
            existing_nullable=False,
        )
        batch_op.alter_column(
            "previous_secret",
            existing_type=sa.String(length=200),
            type_=sa.String(length=256),
            existing_nullable=True,
        )


def downgrade() -> None:
    # Secrets longer than the old column are kept whole on SQLite (no length check there) and
    # refused by PostgreSQL: delete such endpoints before downgrading.
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        batch_op.alter_column(
            "previous_secret",
            existing_type=sa.String(length=256),
            type_=sa.String(length=200),
            existing_nullable=True,
        )
        batch_op.alter_column(
            "secret",
            existing_type=sa.String(length=256),
            type_=sa.String(length=200),
            existing_nullable=False,
        )
        batch_op.drop_column("payload_format")

    with op.batch_alter_table("registrations", schema=None) as batch_op:
        for name in reversed(SDK_FIELDS):
            batch_op.drop_column(name)
        batch_op.drop_column("api_json_schema")
