"""Child chunks of parent-child documents

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 19:05:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('child_chunks',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('dataset_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('document_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('segment_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('word_count', sa.Integer(), nullable=False),
    sa.Column('tokens', sa.Integer(), nullable=False),
    sa.Column('index_node_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('type', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('indexing_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('completed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['segment_id'], ['document_segments.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('child_chunks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_child_chunks_dataset_id'), ['dataset_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_child_chunks_document_id'), ['document_id'], unique=False)
        batch_op.create_index('ix_child_chunks_segment_position', ['segment_id', 'position'], unique=False)
    # a dataset's documents now share its doc_form, which earlier versions never set: take its first document's
    op.execute(
        "UPDATE datasets SET doc_form = (SELECT d.doc_form FROM documents d WHERE d.dataset_id = datasets.id "
        "ORDER BY d.position LIMIT 1) WHERE EXISTS (SELECT 1 FROM documents d WHERE d.dataset_id = datasets.id)"
    )



def downgrade() -> None:
    with op.batch_alter_table('child_chunks', schema=None) as batch_op:
        batch_op.drop_index('ix_child_chunks_segment_position')
        batch_op.drop_index(batch_op.f('ix_child_chunks_document_id'))
        batch_op.drop_index(batch_op.f('ix_child_chunks_dataset_id'))

    op.drop_table('child_chunks')
