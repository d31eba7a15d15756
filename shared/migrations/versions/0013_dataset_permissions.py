"""Dataset member lists (permission partial_members)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 17:00:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dataset_permissions',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('dataset_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('has_permission', sa.Boolean(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dataset_id', 'account_id', name='uq_dataset_permission_account')
    )
    with op.batch_alter_table('dataset_permissions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dataset_permissions_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_dataset_permissions_dataset_id'), ['dataset_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('dataset_permissions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dataset_permissions_dataset_id'))
        batch_op.drop_index(batch_op.f('ix_dataset_permissions_account_id'))
    op.drop_table('dataset_permissions')
