"""prebuilds, prebuild_builds, webhook_deliveries

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 01:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prebuilds",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=32), nullable=False),
        sa.Column("repo", sa.String(length=2048), nullable=False),
        sa.Column("branch", sa.String(length=256), nullable=False),
        sa.Column("devcontainer", sa.String(length=1024), nullable=True),
        sa.Column("git_secret", sa.String(length=100), nullable=True),
        sa.Column("env_secrets", sa.JSON(), nullable=False),
        sa.Column("keep", sa.Integer(), nullable=False),
        sa.Column("webhook_provider", sa.String(length=20), nullable=True),
        sa.Column("webhook_secret", sa.Text(), nullable=True),
        sa.Column("poll_interval", sa.Integer(), nullable=True),
        sa.Column("runtime", sa.String(length=50), nullable=True),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("disk_mib", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("prebuilds", schema=None) as batch_op:
        batch_op.create_index("ix_prebuilds_owner_repo", ["owner", "repo", "branch"], unique=False)
    op.create_table(
        "prebuild_builds",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("prebuild_id", sa.String(length=32), nullable=False),
        sa.Column("commit", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("trigger", sa.String(length=50), nullable=False),
        sa.Column("operation_id", sa.String(length=32), nullable=True),
        sa.Column("snapshot_id", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("workspace", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["prebuild_id"], ["prebuilds.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("prebuild_builds", schema=None) as batch_op:
        batch_op.create_index("ix_prebuild_builds_commit", ["prebuild_id", "commit"], unique=True)
        batch_op.create_index("ix_prebuild_builds_state", ["prebuild_id", "state"], unique=False)
    op.create_table(
        "webhook_deliveries",
        sa.Column("prebuild_id", sa.String(length=32), nullable=False),
        sa.Column("delivery_id", sa.String(length=200), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["prebuild_id"], ["prebuilds.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("prebuild_id", "delivery_id"),
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("prebuild_builds", schema=None) as batch_op:
        batch_op.drop_index("ix_prebuild_builds_state")
        batch_op.drop_index("ix_prebuild_builds_commit")
    op.drop_table("prebuild_builds")
    with op.batch_alter_table("prebuilds", schema=None) as batch_op:
        batch_op.drop_index("ix_prebuilds_owner_repo")
    op.drop_table("prebuilds")
