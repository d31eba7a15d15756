"""App DSL imports waiting to be confirmed (Dify's pending imports)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 10:00:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('app_imports',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('app_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('document', sa.JSON(), nullable=True),
    sa.Column('overrides', sa.JSON(), nullable=True),
    sa.Column('imported_dsl_version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('app_imports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_app_imports_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_app_imports_tenant_id'), ['tenant_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('app_imports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_app_imports_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_app_imports_expires_at'))
    op.drop_table('app_imports')
