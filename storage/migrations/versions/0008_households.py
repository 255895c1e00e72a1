"""Issue 13, who counts: the household register, residents' verifications, one survey vote per household.

Revision ID: 0008_households
Revises: 0007_reports
Create Date: 2026-12-06 18:56:15.464156
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008_households"
down_revision: str | None = "0007_reports"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "households",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("community_id", sa.Integer(), nullable=False),
        sa.Column("building_id", sa.Integer(), nullable=False),
        sa.Column("unit", sa.Integer(), nullable=False),
        sa.Column("room", sa.String(length=16), nullable=False),
        sa.Column("in_register", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("moved_out_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["building_id"], ["buildings.id"], name=op.f("fk_households_building_id_buildings")),
        sa.ForeignKeyConstraint(
            ["community_id"], ["communities.id"], name=op.f("fk_households_community_id_communities")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_households")),
        sa.UniqueConstraint("building_id", "unit", "room", name=op.f("uq_households_building_id")),
    )
    with op.batch_alter_table("households", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_households_community_id"), ["community_id"], unique=False)

    op.create_table(
        "household_members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("household_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("phone_hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["household_id"], ["households.id"], name=op.f("fk_household_members_household_id_households")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_household_members")),
    )
    with op.batch_alter_table("household_members", schema=None) as batch_op:
        batch_op.create_index("ix_household_members_household", ["household_id"], unique=False)
        batch_op.create_index("ix_household_members_phone", ["phone_hash"], unique=False)

    op.create_table(
        "verifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("building_id", sa.Integer(), nullable=False),
        sa.Column("unit", sa.Integer(), nullable=False),
        sa.Column("room", sa.String(length=16), nullable=False),
        sa.Column("household_id", sa.Integer(), nullable=True),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("photo_file_id", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("decided_by", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("ended_by", sa.BigInteger(), nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["building_id"], ["buildings.id"], name=op.f("fk_verifications_building_id_buildings")),
        sa.ForeignKeyConstraint(
            ["household_id"], ["households.id"], name=op.f("fk_verifications_household_id_households")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_verifications_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verifications")),
    )
    with op.batch_alter_table("verifications", schema=None) as batch_op:
        batch_op.create_index("ix_verifications_building_status", ["building_id", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_verifications_household_id"), ["household_id"], unique=False)
        batch_op.create_index("ix_verifications_user_status", ["user_id", "status"], unique=False)

    with op.batch_alter_table("communities", schema=None) as batch_op:
        batch_op.add_column(sa.Column("register_columns", sa.JSON(), server_default="{}", nullable=False))

    with op.batch_alter_table("survey_votes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("household_id", sa.Integer(), nullable=True))
        batch_op.drop_constraint(batch_op.f("uq_survey_votes_topic_id"), type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_survey_votes_topic_id"), ["topic_id", "household_id"])
        batch_op.create_foreign_key(
            batch_op.f("fk_survey_votes_household_id_households"), "households", ["household_id"], ["id"]
        )

    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reporter_verified", sa.Boolean(), server_default=sa.true(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_column("reporter_verified")

    with op.batch_alter_table("survey_votes", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_survey_votes_household_id_households"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("uq_survey_votes_topic_id"), type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_survey_votes_topic_id"), ["topic_id", "user_id"])
        batch_op.drop_column("household_id")

    with op.batch_alter_table("communities", schema=None) as batch_op:
        batch_op.drop_column("register_columns")

    with op.batch_alter_table("verifications", schema=None) as batch_op:
        batch_op.drop_index("ix_verifications_user_status")
        batch_op.drop_index(batch_op.f("ix_verifications_household_id"))
        batch_op.drop_index("ix_verifications_building_status")

    op.drop_table("verifications")
    with op.batch_alter_table("household_members", schema=None) as batch_op:
        batch_op.drop_index("ix_household_members_phone")
        batch_op.drop_index("ix_household_members_household")

    op.drop_table("household_members")
    with op.batch_alter_table("households", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_households_community_id"))

    op.drop_table("households")
