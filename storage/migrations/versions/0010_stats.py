"""Statistics at a million tickets (issues 12 and 14): each ticket's durations kept as whole seconds, and the
month's index made covering, so a month's figures are read from the index alone.

``accept_seconds`` and ``resolve_seconds`` of tickets filed before this revision are worked out from their
timestamps here; the ORM keeps them from now on (storage/models.py).

Revision ID: 0010_stats
Revises: 0009_polish
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010_stats"
down_revision: str | None = "0009_polish"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

COVERED = [
    "community_id",
    "created_at",
    "grid_id",
    "assignee_id",
    "category_id",
    "building_id",
    "status",
    "accept_seconds",
    "resolve_seconds",
    "rating",
    "reopen_count",
    "respond_by",
    "resolve_by",
]


def _seconds(start: str, end: str) -> str:
    """Whole seconds from one timestamp column to another, rounded as the ORM rounds them (half-seconds aside)."""
    if op.get_bind().dialect.name == "postgresql":
        return f"CAST(round(EXTRACT(EPOCH FROM ({end} - {start}))) AS INTEGER)"
    return f"CAST(round((julianday({end}) - julianday({start})) * 86400.0) AS INTEGER)"


def upgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("accept_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("resolve_seconds", sa.Integer(), nullable=True))
        batch_op.drop_index("ix_tickets_community_created")
    op.execute(
        f"UPDATE tickets SET accept_seconds = {_seconds('created_at', 'first_accepted_at')}, "
        f"resolve_seconds = {_seconds('created_at', 'resolved_at')}"
    )
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.create_index("ix_tickets_community_created", COVERED, unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_index("ix_tickets_community_created")
        batch_op.create_index("ix_tickets_community_created", ["community_id", "created_at"], unique=False)
        batch_op.drop_column("resolve_seconds")
        batch_op.drop_column("accept_seconds")
