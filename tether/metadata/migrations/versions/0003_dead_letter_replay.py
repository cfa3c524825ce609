"""dead letters remember their replay: the retry token it ran under, and when

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("replayed_as", sa.String(length=128), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("replayed_unix_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_column("replayed_unix_ms")
        batch_op.drop_column("replayed_as")
