"""A district on one machine: periodic jobs read only what is due, broadcasts queue in batches, indexed counts.

Revision ID: 0012_scale
Revises: 0011_office
Create Date: 2026-12-06 22:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012_scale"
down_revision: str | None = "0011_office"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

TOPIC = sa.text("topic_id IS NOT NULL")
UNREACHABLE = sa.text("unreachable_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("wake_at", sa.DateTime(), nullable=True))
    # Every ticket a sweep may act on is looked at once after the upgrade; each sweep then sets its exact time.
    op.execute("UPDATE tickets SET wake_at = updated_at WHERE status IN ('assigned', 'in_progress', 'resolved')")
    op.drop_index("ix_tickets_topic_id", table_name="tickets")
    op.create_index("ix_tickets_on_topic", "tickets", ["topic_id"], sqlite_where=TOPIC, postgresql_where=TOPIC)
    op.create_index("ix_tickets_wake", "tickets", ["status", "wake_at"])
    op.create_index("ix_users_recipients", "users", ["building_id", "broadcasts_off", "unreachable_at", "id"])
    op.create_index(
        "ix_users_unreachable", "users", ["building_id"], sqlite_where=UNREACHABLE, postgresql_where=UNREACHABLE
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("open_tickets", sa.Integer(), server_default="0", nullable=False))
    op.execute(
        "UPDATE users SET open_tickets = (SELECT count(*) FROM tickets WHERE tickets.assignee_id = users.id"
        " AND tickets.status IN ('assigned', 'in_progress')) WHERE id IN (SELECT assignee_id FROM tickets"
        " WHERE status IN ('assigned', 'in_progress'))"
    )
    with op.batch_alter_table("broadcasts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queued_through", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("queued_at", sa.DateTime(), nullable=True))
    # Broadcasts before this revision were queued whole in the transaction that created them.
    op.execute("UPDATE broadcasts SET queued_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("broadcasts", schema=None) as batch_op:
        batch_op.drop_column("queued_at")
        batch_op.drop_column("queued_through")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("open_tickets")
    op.drop_index("ix_users_unreachable", table_name="users")
    op.drop_index("ix_users_recipients", table_name="users")
    op.drop_index("ix_tickets_wake", table_name="tickets")
    op.drop_index("ix_tickets_on_topic", table_name="tickets")
    op.create_index("ix_tickets_topic_id", "tickets", ["topic_id"])
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_column("wake_at")
