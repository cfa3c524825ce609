"""admitted workers: the worker keys an operator admitted (or revoked)

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admitted_workers",
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("admitted_unix_ms", sa.BigInteger(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("revoked_unix_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("public_key"),
    )


def downgrade() -> None:
    op.drop_table("admitted_workers")
