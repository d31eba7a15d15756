"""prompt versions: numbered model-config versions (draft/published, note), publish confirmation, canary
rollout on apps, and the version recorded on each conversation and message

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 03:10:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('app_model_configs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('version', sa.Integer(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False,
                                      server_default='published'))
        batch_op.add_column(sa.Column('note', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
        batch_op.add_column(sa.Column('published_by', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True))
        batch_op.add_column(sa.Column('published_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))

    # existing configs become versions 1..n of their app, oldest first
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT id, app_id FROM app_model_configs ORDER BY app_id, created_at, id")).all()
    numbers: dict[str, int] = {}
    for row_id, app_id in rows:
        numbers[app_id] = numbers.get(app_id, 0) + 1
        conn.execute(sa.text("UPDATE app_model_configs SET version = :v, published_at = created_at WHERE id = :id"),
                     {"v": numbers[app_id], "id": row_id})

    with op.batch_alter_table('app_model_configs', schema=None) as batch_op:
        batch_op.create_unique_constraint('uq_app_model_config_version', ['app_id', 'version'])

    with op.batch_alter_table('apps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('publish_requires_confirmation', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('rollout_config_id', sqlmodel.sql.sqltypes.AutoString(length=36),
                                      nullable=True))
        batch_op.add_column(sa.Column('rollout_percentage', sa.Float(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('rollout_started_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('rollout_started_by', sqlmodel.sql.sqltypes.AutoString(length=36),
                                      nullable=True))

    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model_config_id', sqlmodel.sql.sqltypes.AutoString(length=36),
                                      nullable=True))

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model_config_id', sqlmodel.sql.sqltypes.AutoString(length=36),
                                      nullable=True))
        batch_op.create_index('ix_msg_model_config_created', ['model_config_id', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_msg_model_config_created')
        batch_op.drop_column('model_config_id')
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_column('model_config_id')
    with op.batch_alter_table('apps', schema=None) as batch_op:
        for name in ('rollout_started_by', 'rollout_started_at', 'rollout_percentage', 'rollout_config_id',
                     'publish_requires_confirmation'):
            batch_op.drop_column(name)
    with op.batch_alter_table('app_model_configs', schema=None) as batch_op:
        batch_op.drop_constraint('uq_app_model_config_version', type_='unique')
        for name in ('published_at', 'published_by', 'note', 'status', 'version'):
            batch_op.drop_column(name)
