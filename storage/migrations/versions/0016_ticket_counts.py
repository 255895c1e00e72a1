"""ticket_counts: tickets per community, month (in its time zone), category and compound, for the candidates job.

Filled from the tickets on upgrade: every month of every community, not only the current one, so that the count
a later write moves (or a clock that is not the machine's, as in a test or a benchmark) finds the month counted.
One GROUP BY per month over ix_tickets_community_created: seconds for a million tickets. Each count whose
candidate topic exists names it, so no candidate is proposed a second time after the upgrade.

Revision ID: 0016_ticket_counts
Revises: 0015_handover
Create Date: 2026-12-07 09:30:00
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision: str = "0016_ticket_counts"
down_revision: str | None = "0015_handover"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

UNPROPOSED = sa.text("topic_id IS NULL")

communities = sa.table("communities", sa.column("id", sa.Integer()), sa.column("timezone", sa.String()))
buildings = sa.table("buildings", sa.column("id", sa.Integer()), sa.column("compound_id", sa.Integer()))
tickets = sa.table(
    "tickets",
    sa.column("community_id", sa.Integer()),
    sa.column("category_id", sa.Integer()),
    sa.column("building_id", sa.Integer()),
    sa.column("created_at", sa.DateTime()),  # naive UTC, as the models store it
)
topics = sa.table(
    "topics", sa.column("id", sa.Integer()), sa.column("community_id", sa.Integer()), sa.column("candidate_key")
)
counts = sa.table(
    "ticket_counts",
    sa.column("community_id", sa.Integer()),
    sa.column("month", sa.String()),
    sa.column("category_id", sa.Integer()),
    sa.column("compound_id", sa.Integer()),
    sa.column("tickets", sa.Integer()),
    sa.column("topic_id", sa.Integer()),
)


def upgrade() -> None:
    op.create_table(
        "ticket_counts",
        sa.Column("community_id", sa.Integer(), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("category_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("compound_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("tickets", sa.Integer(), nullable=False),
        sa.Column("topic_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["community_id"], ["communities.id"], name="fk_ticket_counts_community_id_communities"),
        sa.ForeignKeyConstraint(["topic_id"], ["topics.id"], name="fk_ticket_counts_topic_id_topics"),
        sa.PrimaryKeyConstraint("community_id", "month", "category_id", "compound_id", name="pk_ticket_counts"),
    )
    op.create_index(
        "ix_ticket_counts_unproposed",
        "ticket_counts",
        ["month", "tickets"],
        sqlite_where=UNPROPOSED,
        postgresql_where=UNPROPOSED,
    )
    bind = op.get_bind()
    for community_id, timezone in bind.execute(sa.select(communities.c.id, communities.c.timezone)).all():
        first, last = bind.execute(
            sa.select(sa.func.min(tickets.c.created_at), sa.func.max(tickets.c.created_at)).where(
                tickets.c.community_id == community_id
            )
        ).one()
        if first is None:
            continue
        rows = []
        for month, start, end in _months(first, last, timezone):
            counted = bind.execute(
                sa.select(tickets.c.category_id, buildings.c.compound_id, sa.func.count())
                .join(buildings, buildings.c.id == tickets.c.building_id + 0)
                .where(
                    tickets.c.community_id == community_id, tickets.c.created_at >= start, tickets.c.created_at < end
                )
                .group_by(tickets.c.category_id, buildings.c.compound_id)
            )
            rows += [
                {"community_id": community_id, "month": month, "category_id": cat, "compound_id": comp, "tickets": n}
                for cat, comp, n in counted
            ]
        if rows:
            bind.execute(sa.insert(counts), rows)
    links = [
        {"topic": topic_id, "c": community_id, "m": month, "cat": int(category), "comp": int(compound)}
        for topic_id, community_id, key in bind.execute(
            sa.select(topics.c.id, topics.c.community_id, topics.c.candidate_key).where(
                topics.c.candidate_key.is_not(None)
            )
        )
        for category, compound, month in [key.split(":")]
    ]
    if links:
        bind.execute(
            sa.update(counts)
            .where(
                counts.c.community_id == sa.bindparam("c"),
                counts.c.month == sa.bindparam("m"),
                counts.c.category_id == sa.bindparam("cat"),
                counts.c.compound_id == sa.bindparam("comp"),
            )
            .values(topic_id=sa.bindparam("topic")),
            links,
        )


def _months(first: datetime, last: datetime, timezone: str) -> list[tuple[str, datetime, datetime]]:
    """Each month of ``timezone`` from the one holding ``first`` to the one holding ``last`` (naive UTC): its key
    ("YYYY-MM", as domain.ticket_counts.month_key), start and end (naive UTC)."""
    zone = ZoneInfo(timezone)
    local = first.replace(tzinfo=UTC).astimezone(zone)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end_at = last.replace(tzinfo=UTC)
    found = []
    while start <= end_at:
        following = (start.replace(tzinfo=None) + timedelta(days=32)).replace(day=1).replace(tzinfo=zone)
        found.append(
            (
                start.strftime("%Y-%m"),
                start.astimezone(UTC).replace(tzinfo=None),
                following.astimezone(UTC).replace(tzinfo=None),
            )
        )
        start = following
    return found


def downgrade() -> None:
    op.drop_index("ix_ticket_counts_unproposed", table_name="ticket_counts")
    op.drop_table("ticket_counts")
