"""access: scoped, named, rotatable API keys (admin keys too) and member invitations

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 03:10:00.000000
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
        batch_op.add_column(sa.Column('permissions', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True))

    with op.batch_alter_table('tenant_members', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False,
                                      server_default='active'))
        batch_op.add_column(sa.Column('invited_by', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True))
        batch_op.add_column(sa.Column('invite_token_hash', sqlmodel.sql.sqltypes.AutoString(length=64),
                                      nullable=True))
        batch_op.add_column(sa.Column('invite_expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.create_index(batch_op.f('ix_tenant_members_invite_token_hash'), ['invite_token_hash'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('tenant_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tenant_members_invite_token_hash'))
        batch_op.drop_column('invite_expires_at')
        batch_op.drop_column('invite_token_hash')
        batch_op.drop_column('invited_by')
        batch_op.drop_column('status')

    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_column('created_by')
        batch_op.drop_column('expires_at')
        batch_op.drop_column('permissions')
        batch_op.drop_column('name')
