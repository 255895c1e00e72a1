"""outbox.request: a personal row's Bot API request as it was prepared, kept while the row is claimed.

A restarted process sends what its dead predecessor had claimed from these before it has loaded the rest of
the bot (bot/outbound/handover.py). Rows queued before this revision have none and wait for the full start.

Revision ID: 0015_handover
Revises: 0014_summary
Create Date: 2026-12-07 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0015_handover"
down_revision: str | None = "0014_summary"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("request", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("request")
