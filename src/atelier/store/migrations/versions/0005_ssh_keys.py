"""ssh_keys: public keys registered per token for the SSH gateway

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ssh_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("ssh_keys", schema=None) as batch_op:
        batch_op.create_index("ix_ssh_keys_owner_name", ["owner", "name"], unique=True)
        batch_op.create_index(
            "ix_ssh_keys_owner_fingerprint", ["owner", "fingerprint"], unique=True
        )
        batch_op.create_index("ix_ssh_keys_fingerprint", ["fingerprint"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ssh_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_ssh_keys_fingerprint")
        batch_op.drop_index("ix_ssh_keys_owner_fingerprint")
        batch_op.drop_index("ix_ssh_keys_owner_name")
    op.drop_table("ssh_keys")
