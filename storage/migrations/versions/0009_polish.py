"""Polish after issues 10 and 11: "Is it fixed?" messages kept current, and per-person command menus.

Revision ID: 0009_polish
Revises: 0008_households
Create Date: 2026-12-06 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009_polish"
down_revision: str | None = "0008_households"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "ticket_question_copies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.Column("caption", sa.Boolean(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"], ["ticket_events.id"], name=op.f("fk_ticket_question_copies_event_id_ticket_events")
        ),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name=op.f("fk_ticket_question_copies_ticket_id_tickets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ticket_question_copies")),
        sa.UniqueConstraint("chat_id", "message_id", name=op.f("uq_ticket_question_copies_chat_id")),
    )
    with op.batch_alter_table("ticket_question_copies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ticket_question_copies_ticket_id"), ["ticket_id"], unique=False)
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("command_menu", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("command_menu")
    with op.batch_alter_table("ticket_question_copies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ticket_question_copies_ticket_id"))
    op.drop_table("ticket_question_copies")
