"""Issue 10, hostile and odd input: every copy of a ticket's card is recorded so it can be kept current; photo
captions are kept.

Revision ID: 0005_hostile
Revises: 0004
Create Date: 2026-12-06 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005_hostile"
down_revision: str | None = "0004"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "ticket_card_copies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name=op.f("fk_ticket_card_copies_ticket_id_tickets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ticket_card_copies")),
        sa.UniqueConstraint("chat_id", "message_id", name=op.f("uq_ticket_card_copies_chat_id")),
    )
    with op.batch_alter_table("ticket_card_copies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ticket_card_copies_ticket_id"), ["ticket_id"], unique=False)

    with op.batch_alter_table("ticket_photos", schema=None) as batch_op:
        batch_op.add_column(sa.Column("caption", sa.Text(), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("ticket_photos", schema=None) as batch_op:
        batch_op.drop_column("caption")

    with op.batch_alter_table("ticket_card_copies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ticket_card_copies_ticket_id"))

    op.drop_table("ticket_card_copies")
