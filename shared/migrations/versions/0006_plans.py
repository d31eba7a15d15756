"""plans: workspace plan defaults for per-app limits, app overrides (NULL = plan default) and api_rpd

Existing data keeps its behaviour: every workspace so far carried the unused column default
'sandbox', so it becomes 'enterprise' (no limits unless custom ones are set), and an app's
api_rpm/api_rph of 0 (the old default: no limit) becomes NULL (the plan's value, unlimited under
enterprise). Changing the workspace's plan later then applies its defaults to those apps.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 03:20:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('custom_limits', sa.JSON(), nullable=True))
    with op.batch_alter_table('apps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('api_rpd', sa.Integer(), nullable=True))
        batch_op.alter_column('api_rpm', existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column('api_rph', existing_type=sa.Integer(), nullable=True)
    op.execute("UPDATE tenants SET plan = 'enterprise' WHERE plan = 'sandbox'")
    op.execute("UPDATE apps SET api_rpm = NULL WHERE api_rpm = 0")
    op.execute("UPDATE apps SET api_rph = NULL WHERE api_rph = 0")


def downgrade() -> None:
    # the old schema has no "plan default": the plan's values are lost, NULL goes back to 0 (no limit)
    op.execute("UPDATE apps SET api_rpm = 0 WHERE api_rpm IS NULL")
    op.execute("UPDATE apps SET api_rph = 0 WHERE api_rph IS NULL")
    op.execute("UPDATE tenants SET plan = 'sandbox'")
    with op.batch_alter_table('apps', schema=None) as batch_op:
        batch_op.alter_column('api_rph', existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column('api_rpm', existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column('api_rpd')
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.drop_column('custom_limits')
