"""Issue 3: ticket deadlines, departments and escalation, resident confirmation and rating, "me too" followers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 05:18:04.203278
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "departments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("community_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("name_en", sa.String(length=100), nullable=False),
        sa.Column("sort_order", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["community_id"], ["communities.id"], name=op.f("fk_departments_community_id_communities")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_departments")),
        sa.UniqueConstraint("community_id", "code", name=op.f("uq_departments_community_id")),
    )
    op.create_table(
        "ticket_followers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("joined_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name=op.f("fk_ticket_followers_ticket_id_tickets")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_ticket_followers_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ticket_followers")),
        sa.UniqueConstraint("ticket_id", "user_id", name=op.f("uq_ticket_followers_ticket_id")),
    )
    with op.batch_alter_table("ticket_followers", schema=None) as batch_op:
        batch_op.create_index("ix_ticket_followers_user", ["user_id", "ticket_id"], unique=False)

    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("respond_by", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("resolve_by", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("department", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("reopen_count", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("rating", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("rating_comment", sa.Text(), server_default="", nullable=False))
        batch_op.add_column(sa.Column("closed_at", sa.DateTime(), nullable=True))
        batch_op.create_index("ix_tickets_building_category", ["building_id", "category_id", "status"], unique=False)
        batch_op.create_index("ix_tickets_resolve_by", ["status", "resolve_by"], unique=False)
        batch_op.create_index("ix_tickets_respond_by", ["status", "respond_by"], unique=False)
        batch_op.create_index("ix_tickets_status_resolved", ["status", "resolved_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_index("ix_tickets_status_resolved")
        batch_op.drop_index("ix_tickets_respond_by")
        batch_op.drop_index("ix_tickets_resolve_by")
        batch_op.drop_index("ix_tickets_building_category")
        batch_op.drop_column("closed_at")
        batch_op.drop_column("rating_comment")
        batch_op.drop_column("rating")
        batch_op.drop_column("reopen_count")
        batch_op.drop_column("department")
        batch_op.drop_column("resolve_by")
        batch_op.drop_column("respond_by")

    with op.batch_alter_table("ticket_followers", schema=None) as batch_op:
        batch_op.drop_index("ix_ticket_followers_user")

    op.drop_table("ticket_followers")
    op.drop_table("departments")
