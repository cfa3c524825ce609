"""jobs know their orchestrator: the owner's key, the request as dispatched and the quota it
charged (jobs indexed by owner and state); orchestrator leases say which owners are alive

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("owner", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("request", sa.LargeBinary(), nullable=True))
        batch_op.add_column(
            sa.Column("quota_tokens", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.create_index(batch_op.f("ix_jobs_owner"), ["owner"], unique=False)
        # Orchestrators look for running jobs of dead owners every few seconds.
        batch_op.create_index(batch_op.f("ix_jobs_state"), ["state"], unique=False)
    op.create_table(
        "orchestrator_leases",
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("expires_unix_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("owner"),
    )


def downgrade() -> None:
    op.drop_table("orchestrator_leases")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_state"))
        batch_op.drop_index(batch_op.f("ix_jobs_owner"))
        batch_op.drop_column("quota_tokens")
        batch_op.drop_column("request")
        batch_op.drop_column("owner")
