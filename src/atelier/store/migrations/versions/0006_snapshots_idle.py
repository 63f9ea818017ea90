"""snapshots (+ labels); sandboxes.auto_stop, last_active_at, snapshot_id

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("auto_stop", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("last_active_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("snapshot_id", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_sandboxes_snapshot_id", ["snapshot_id"], unique=False)
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=True),
        sa.Column("owner", sa.String(length=32), nullable=True),
        sa.Column("sandbox_id", sa.String(length=32), nullable=False),
        sa.Column("template", sa.String(length=200), nullable=False),
        sa.Column("template_version", sa.Integer(), nullable=True),
        sa.Column("runtime", sa.String(length=50), nullable=False),
        sa.Column("has_memory", sa.Boolean(), nullable=False),
        sa.Column("parent_id", sa.String(length=32), nullable=True),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("disk_mib", sa.Integer(), nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("internal", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.create_index("ix_snapshots_owner", ["owner"], unique=False)
        batch_op.create_index("ix_snapshots_owner_name", ["owner", "name"], unique=True)
        batch_op.create_index("ix_snapshots_parent_id", ["parent_id"], unique=False)
        batch_op.create_index("ix_snapshots_template", ["template"], unique=False)
    op.create_table(
        "snapshot_labels",
        sa.Column("snapshot_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("value", sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(["snapshot_id"], ["snapshots.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("snapshot_id", "key"),
    )
    with op.batch_alter_table("snapshot_labels", schema=None) as batch_op:
        batch_op.create_index("ix_snapshot_labels_kv", ["key", "value"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("snapshot_labels", schema=None) as batch_op:
        batch_op.drop_index("ix_snapshot_labels_kv")
    op.drop_table("snapshot_labels")
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.drop_index("ix_snapshots_template")
        batch_op.drop_index("ix_snapshots_parent_id")
        batch_op.drop_index("ix_snapshots_owner_name")
        batch_op.drop_index("ix_snapshots_owner")
    op.drop_table("snapshots")
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_index("ix_sandboxes_snapshot_id")
        batch_op.drop_column("snapshot_id")
        batch_op.drop_column("last_active_at")
        batch_op.drop_column("auto_stop")
