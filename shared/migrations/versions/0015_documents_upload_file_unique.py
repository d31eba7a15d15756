"""A file is one document's: unique documents.upload_file_id

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 18:10:00
"""
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.create_index('uq_documents_upload_file', ['upload_file_id'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_index('uq_documents_upload_file')
