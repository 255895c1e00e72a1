"""Issue 4: deliberation topics with surveys, decisions and tasks; scheduled broadcasts; broadcast opt-out.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 07:40:43.518754
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "broadcasts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("community_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(), nullable=True),
        sa.Column("started_by", sa.BigInteger(), nullable=True),
        sa.Column("content", sa.JSON(), nullable=False),
        sa.Column("recipients", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["community_id"], ["communities.id"], name=op.f("fk_broadcasts_community_id_communities")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broadcasts")),
        sa.UniqueConstraint("community_id", "kind", "period", name=op.f("uq_broadcasts_community_id")),
    )
    op.create_table(
        "topics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("community_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("raised_by", sa.BigInteger(), nullable=True),
        sa.Column("origin_note", sa.Text(), nullable=False),
        sa.Column("compound_ids", sa.JSON(), nullable=False),
        sa.Column("building_ids", sa.JSON(), nullable=False),
        sa.Column("candidate_key", sa.String(length=64), nullable=True),
        sa.Column("category_id", sa.Integer(), nullable=True),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("background", sa.Text(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("votes_for", sa.Integer(), nullable=True),
        sa.Column("votes_against", sa.Integer(), nullable=True),
        sa.Column("votes_abstain", sa.Integer(), nullable=True),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("noticed_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["category_id"], ["categories.id"], name=op.f("fk_topics_category_id_categories")),
        sa.ForeignKeyConstraint(["community_id"], ["communities.id"], name=op.f("fk_topics_community_id_communities")),
        sa.ForeignKeyConstraint(["raised_by"], ["users.id"], name=op.f("fk_topics_raised_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_topics")),
        sa.UniqueConstraint("community_id", "candidate_key", name=op.f("uq_topics_community_id")),
    )
    with op.batch_alter_table("topics", schema=None) as batch_op:
        batch_op.create_index("ix_topics_community_status", ["community_id", "status"], unique=False)

    op.create_table(
        "survey_votes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("topic_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("option", sa.Integer(), nullable=False),
        sa.Column("voted_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["topic_id"], ["topics.id"], name=op.f("fk_survey_votes_topic_id_topics")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_survey_votes_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_survey_votes")),
        sa.UniqueConstraint("topic_id", "user_id", name=op.f("uq_survey_votes_topic_id")),
    )
    op.create_table(
        "topic_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("topic_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor_id", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["topic_id"], ["topics.id"], name=op.f("fk_topic_events_topic_id_topics")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_topic_events")),
    )
    with op.batch_alter_table("topic_events", schema=None) as batch_op:
        batch_op.create_index("ix_topic_events_topic", ["topic_id", "id"], unique=False)

    op.create_table(
        "topic_tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("topic_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("responsible", sa.String(length=100), nullable=False),
        sa.Column("due_on", sa.Date(), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["topic_id"], ["topics.id"], name=op.f("fk_topic_tasks_topic_id_topics")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_topic_tasks")),
    )
    with op.batch_alter_table("topic_tasks", schema=None) as batch_op:
        batch_op.create_index("ix_topic_tasks_topic", ["topic_id", "id"], unique=False)

    with op.batch_alter_table("communities", schema=None) as batch_op:
        batch_op.add_column(sa.Column("meeting_day", sa.Integer(), server_default="28", nullable=False))
        batch_op.add_column(sa.Column("meeting_time", sa.String(length=5), server_default="19:30", nullable=False))
        batch_op.add_column(sa.Column("meeting_place", sa.String(length=200), server_default="", nullable=False))
        batch_op.add_column(sa.Column("agenda_cron", sa.String(length=64), server_default="0 9 25 * *", nullable=False))
        batch_op.add_column(
            sa.Column("feedback_cron", sa.String(length=64), server_default="0 19 5 * *", nullable=False)
        )
        batch_op.add_column(sa.Column("candidate_threshold", sa.Integer(), server_default="3", nullable=False))

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("broadcast_id", sa.Integer(), nullable=True))
        batch_op.drop_index(batch_op.f("ix_outbox_due"))
        batch_op.create_index("ix_outbox_due", ["status", "priority", "not_before", "id"], unique=False)
        batch_op.create_unique_constraint(batch_op.f("uq_outbox_broadcast_id"), ["broadcast_id", "chat_id"])
        batch_op.create_foreign_key(
            batch_op.f("fk_outbox_broadcast_id_broadcasts"), "broadcasts", ["broadcast_id"], ["id"]
        )

    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("topic_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_tickets_topic_id"), ["topic_id"], unique=False)
        batch_op.create_foreign_key(batch_op.f("fk_tickets_topic_id_topics"), "topics", ["topic_id"], ["id"])

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("broadcasts_off", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("broadcasts_off")

    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_tickets_topic_id_topics"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_tickets_topic_id"))
        batch_op.drop_column("topic_id")

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_outbox_broadcast_id_broadcasts"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("uq_outbox_broadcast_id"), type_="unique")
        batch_op.drop_index("ix_outbox_due")
        batch_op.create_index(batch_op.f("ix_outbox_due"), ["status", "not_before", "id"], unique=False)
        batch_op.drop_column("broadcast_id")
        batch_op.drop_column("priority")

    with op.batch_alter_table("communities", schema=None) as batch_op:
        batch_op.drop_column("candidate_threshold")
        batch_op.drop_column("feedback_cron")
        batch_op.drop_column("agenda_cron")
        batch_op.drop_column("meeting_place")
        batch_op.drop_column("meeting_time")
        batch_op.drop_column("meeting_day")

    with op.batch_alter_table("topic_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_topic_tasks_topic")

    op.drop_table("topic_tasks")
    with op.batch_alter_table("topic_events", schema=None) as batch_op:
        batch_op.drop_index("ix_topic_events_topic")

    op.drop_table("topic_events")
    op.drop_table("survey_votes")
    with op.batch_alter_table("topics", schema=None) as batch_op:
        batch_op.drop_index("ix_topics_community_status")

    op.drop_table("topics")
    op.drop_table("broadcasts")
