"""Nothing lost: when an update's handling ended with its answers, and whose update it is.

An update handled but never answered (the process died between the update's commit and its answer) is
resumed after a restart: its person is shown where they stand. Rows already handled count as answered.

Revision ID: 0013_crash
Revises: 0012_scale
Create Date: 2026-12-06 22:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0013_crash"
down_revision: str | None = "0012_scale"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_updates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("user_key", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("answered_at", sa.DateTime(), nullable=True))
        batch_op.create_index("ix_inbound_updates_user_key", ["user_key", "update_id"], unique=False)
    # What the previous version handled, it answered as far as anyone can tell now: nothing to resume.
    op.execute("UPDATE inbound_updates SET answered_at = handled_at WHERE handled_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("inbound_updates", schema=None) as batch_op:
        batch_op.drop_index("ix_inbound_updates_user_key")
        batch_op.drop_column("answered_at")
        batch_op.drop_column("user_key")
