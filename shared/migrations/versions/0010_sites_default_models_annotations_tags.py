"""the rest of Dify's service API: apps.site (GET /v1/site), workspace default models (the audio endpoints),
annotations and annotation reply, knowledge tags

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 10:44:15
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tags',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('type', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'type', 'name', name='uq_tags_tenant_type_name')
    )
    with op.batch_alter_table('tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tags_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('tenant_default_models',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('model_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('provider', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'model_type', name='uq_default_model_tenant_type')
    )
    with op.batch_alter_table('tenant_default_models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tenant_default_models_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('app_annotation_settings',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('app_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('score_threshold', sa.Float(), nullable=False),
    sa.Column('embedding_provider', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('embedding_model', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('job_action', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('job_status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('job_error', sa.Text(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('app_annotation_settings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_app_annotation_settings_app_id'), ['app_id'], unique=True)
        batch_op.create_index(batch_op.f('ix_app_annotation_settings_job_id'), ['job_id'], unique=False)

    op.create_table('message_annotations',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('app_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('answer', sa.Text(), nullable=False),
    sa.Column('hit_count', sa.Integer(), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('conversation_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('message_annotations', schema=None) as batch_op:
        batch_op.create_index('ix_annotations_app_created', ['app_id', 'created_at'], unique=False)

    op.create_table('tag_bindings',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('tag_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('target_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['tag_id'], ['tags.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tag_id', 'target_id', name='uq_tag_binding')
    )
    with op.batch_alter_table('tag_bindings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tag_bindings_target_id'), ['target_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_tag_bindings_tenant_id'), ['tenant_id'], unique=False)

    with op.batch_alter_table('apps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('site', sa.JSON(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('apps', schema=None) as batch_op:
        batch_op.drop_column('site')

    with op.batch_alter_table('tag_bindings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tag_bindings_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_tag_bindings_target_id'))

    op.drop_table('tag_bindings')
    with op.batch_alter_table('message_annotations', schema=None) as batch_op:
        batch_op.drop_index('ix_annotations_app_created')

    op.drop_table('message_annotations')
    with op.batch_alter_table('app_annotation_settings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_app_annotation_settings_job_id'))
        batch_op.drop_index(batch_op.f('ix_app_annotation_settings_app_id'))

    op.drop_table('app_annotation_settings')
    with op.batch_alter_table('tenant_default_models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tenant_default_models_tenant_id'))

    op.drop_table('tenant_default_models')
    with op.batch_alter_table('tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tags_tenant_id'))

    op.drop_table('tags')
