"""indexes for the console's log pages (conversations by app and sort column, feedback by conversation) and
for the file preview check (message_files by upload)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 03:40:00
"""
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # one app's conversation list, sorted by updated_at or created_at (ix_conv_app_user_updated has end_user_id
    # between app_id and updated_at, so it cannot give that order)
    op.create_index('ix_conv_app_updated', 'conversations', ['app_id', 'updated_at'], unique=False)
    op.create_index('ix_conv_app_created', 'conversations', ['app_id', 'created_at'], unique=False)
    # the feedback counts of a page of an app's conversations (app_id second: SQLite without ANALYZE statistics
    # would otherwise pick ix_message_feedbacks_app_id, the whole app's feedback)
    op.create_index('ix_feedback_conv_app', 'message_feedbacks', ['conversation_id', 'app_id'], unique=False)
    # GET /v1/files/{id}/preview: is the upload attached to a message?
    op.create_index('ix_message_files_upload_file_id', 'message_files', ['upload_file_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_message_files_upload_file_id', table_name='message_files')
    op.drop_index('ix_feedback_conv_app', table_name='message_feedbacks')
    op.drop_index('ix_conv_app_created', table_name='conversations')
    op.drop_index('ix_conv_app_updated', table_name='conversations')
