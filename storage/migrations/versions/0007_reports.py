"""Issue 14, the office's view: the first acceptance of each ticket, tickets by community and filing time, the
monthly report's schedule, the public notice chat, and workers' phone numbers for the stairwell posters.

``first_accepted_at`` of tickets filed before this revision is taken from their history (the earliest
``accepted`` event), so last months' response rates stay right after the upgrade.

Revision ID: 0007_reports
Revises: 0006_deploy
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007_reports"
down_revision: str | None = "0006_deploy"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("communities", schema=None) as batch_op:
        batch_op.add_column(sa.Column("report_cron", sa.String(length=64), server_default="0 8 1 * *", nullable=False))
        batch_op.add_column(sa.Column("public_chat_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("public_closed_tickets", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phone", sa.String(length=32), server_default="", nullable=False))
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("first_accepted_at", sa.DateTime(), nullable=True))
        batch_op.create_index("ix_tickets_community_created", ["community_id", "created_at"], unique=False)
    op.execute(
        "UPDATE tickets SET first_accepted_at = (SELECT min(e.at) FROM ticket_events e "
        "WHERE e.ticket_id = tickets.id AND e.kind = 'accepted')"
    )


def downgrade() -> None:
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.drop_column("phone")
    with op.batch_alter_table("communities", schema=None) as batch_op:
        batch_op.drop_column("public_closed_tickets")
        batch_op.drop_column("public_chat_id")
        batch_op.drop_column("report_cron")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_index("ix_tickets_community_created")
        batch_op.drop_column("first_accepted_at")
