"""The office's figures for ended months, summed once: month_summaries and month_figures.

Empty at first: the statistics job makes a row for each month that has ended and sums it within a minute or two
of the start (one month per transaction); until then the figures come from the tickets, as before.

Revision ID: 0014_summary
Revises: 0013_crash
Create Date: 2026-12-07 01:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0014_summary"
down_revision: str | None = "0013_crash"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

COUNTS = (
    "received",
    "accepted_in_time",
    "resolved_in_time",
    "closed_confirmed",
    "resolved_once",
    "reopened",
    "rated",
    "satisfied",
    "rating_sum",
)


def upgrade() -> None:
    op.create_table(
        "month_summaries",
        sa.Column("community_id", sa.Integer(), nullable=False),
        sa.Column("month", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("starts_at", sa.DateTime(), nullable=False),
        sa.Column("ends_at", sa.DateTime(), nullable=False),
        sa.Column("marked_at", sa.DateTime(), nullable=False),
        sa.Column("changes", sa.Integer(), nullable=False),
        sa.Column("summarised_changes", sa.Integer(), nullable=True),
        sa.Column("summarised_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["community_id"], ["communities.id"], name="fk_month_summaries_community_id_communities"
        ),
        sa.PrimaryKeyConstraint("community_id", "month", name="pk_month_summaries"),
    )
    op.create_table(
        "month_figures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("community_id", sa.Integer(), nullable=False),
        sa.Column("month", sa.Integer(), nullable=False),
        sa.Column("grid_id", sa.Integer(), nullable=False),
        sa.Column("assignee_id", sa.BigInteger(), nullable=True),
        sa.Column("category_id", sa.Integer(), nullable=False),
        sa.Column("compound_id", sa.Integer(), nullable=False),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in COUNTS),
        sa.ForeignKeyConstraint(["community_id"], ["communities.id"], name="fk_month_figures_community_id_communities"),
        sa.PrimaryKeyConstraint("id", name="pk_month_figures"),
    )
    op.create_index("ix_month_figures_month", "month_figures", ["community_id", "month"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_month_figures_month", table_name="month_figures")
    op.drop_table("month_figures")
    op.drop_table("month_summaries")
