"""message_files: files sent with a chat or completion message

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 03:30:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('message_files',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('type', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('transfer_method', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('upload_file_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('filename', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('mime_type', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('belongs_to', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('message_files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_message_files_message_id'), ['message_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('message_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_message_files_message_id'))
    op.drop_table('message_files')
