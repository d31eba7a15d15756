"""Segment import jobs (the console's CSV batch import)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 20:12:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('segment_import_jobs',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('dataset_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('document_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('upload_file_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['document_id'], ['documents.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('segment_import_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_segment_import_jobs_document_id'), ['document_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_segment_import_jobs_tenant_id'), ['tenant_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('segment_import_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_segment_import_jobs_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_segment_import_jobs_document_id'))

    op.drop_table('segment_import_jobs')
