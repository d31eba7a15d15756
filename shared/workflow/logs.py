"""The workflow-run log of one app (reference §2.15 ``GET /workflows/logs``), in one place: the runtime's public
``/v1/workflows/logs`` and the console's ``/console/api/apps/{app_id}/workflow-app-logs`` both answer with it.
The caller checks the app (its tenant and mode) first; this module only reads ``workflow_runs`` and
``end_users`` through the shared models.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Text, cast, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.errors import invalid_param
from shared.models import Account, EndUser, WorkflowRun, ts
from shared.workflow.graph import GRAPH_MODES

# the app modes that have workflow runs
WORKFLOW_LOG_MODES = GRAPH_MODES
STATUSES = ("succeeded", "failed", "stopped", "partial-succeeded", "running")


def contains(column: Any, keyword: str) -> ColumnElement[bool]:
    """``column`` contains ``keyword`` in any case (ILIKE on Postgres, lower() LIKE on SQLite), ``%`` and
    ``_`` literal: the keyword search of every log page (here and services/console/service/logs.py)."""
    return column.icontains(keyword, autoescape=True)


def _aware(dt: datetime | None) -> datetime | None:
    # a naive query value means UTC (the columns refuse naive datetimes)
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def log_view(r: WorkflowRun, u: EndUser | None) -> dict[str, Any]:
    """One item of the log (Dify's workflow_app_log_partial_fields)."""
    return {
        "id": r.id,
        "workflow_run": {"id": r.id, "version": r.version, "status": r.status, "error": r.error,
                         "elapsed_time": r.elapsed_time, "total_tokens": r.total_tokens,
                         "total_steps": r.total_steps, "created_at": ts(r.created_at),
                         "finished_at": ts(r.finished_at)},
        "created_from": r.created_from, "created_by_role": r.created_by_role, "created_by_account": None,
        "created_by_end_user": {"id": u.id, "type": u.type, "is_anonymous": u.is_anonymous,
                                "session_id": u.session_id} if u else None,
        "created_at": ts(r.created_at),
    }


async def workflow_logs(s: AsyncSession, app_id: str, *, keyword: str | None = None, status: str | None = None,
                        page: int = 1, limit: int = 20, before: datetime | None = None,
                        after: datetime | None = None, session_id: str | None = None,
                        account_email: str | None = None) -> dict[str, Any]:
    """A page of the app's runs, newest first: ``{page, limit, total, has_more, data}``. ``keyword`` matches
    the inputs or outputs; ``before``/``after`` bound the creation time (exclusive); ``session_id`` is the end
    user's ``user``; ``account_email`` keeps the runs a console account started (Dify's debugger runs: Plexus
    has none yet, so none match). Bad paging or an unknown status is 400 invalid_param."""
    if not 1 <= page <= 99999 or not 1 <= limit <= 100:
        raise invalid_param("page must be 1-99999 and limit 1-100")
    if status is not None and status not in STATUSES:
        raise invalid_param("status must be succeeded, failed, stopped, partial-succeeded or running")
    where = [WorkflowRun.app_id == app_id]
    if status:
        where.append(WorkflowRun.status == status)
    if before:
        where.append(WorkflowRun.created_at < _aware(before))
    if after:
        where.append(WorkflowRun.created_at > _aware(after))
    if keyword:  # in the JSON text, where shared/db.py leaves non-ASCII unescaped
        where.append(contains(cast(WorkflowRun.inputs, Text), keyword)
                     | contains(cast(WorkflowRun.outputs, Text), keyword))
    q = select(WorkflowRun, EndUser).join(EndUser, EndUser.id == WorkflowRun.created_by, isouter=True).where(*where)
    if session_id:
        q = q.where(EndUser.session_id == session_id)
    if account_email:
        q = q.where(WorkflowRun.created_by_role == "account",
                    col(WorkflowRun.created_by).in_(select(Account.id).where(Account.email == account_email)))
    total = (await s.exec(select(func.count()).select_from(q.subquery()))).one()
    rows = (await s.exec(q.order_by(col(WorkflowRun.created_at).desc(), col(WorkflowRun.id).desc())
                         .offset((page - 1) * limit).limit(limit))).all()
    return {"page": page, "limit": limit, "total": total, "has_more": page * limit < total,
            "data": [log_view(r, u) for r, u in rows]}
