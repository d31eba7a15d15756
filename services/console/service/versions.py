"""Model-config versions of a basic app: history with diffs, publish confirmation, canary rollouts.

Every model-config save is an ``app_model_configs`` row numbered per app (1, 2, …). Without
``publish_requires_confirmation`` a save is published at once (it becomes ``apps.app_model_config_id``); with it
the save is a draft that nothing serves until ``publish``. A rollout serves a candidate version to a share of
new conversations (the runtime picks by a hash of the conversation id and records the version on the
conversation and on each message); ``promote`` makes it current, ``rollback`` ends it. Every change that alters
what is served is announced on ``plexus.config.app.<id>``, so each runtime drops its cached entry at once.

Every change to the served versions or the rollout locks the app row first (``get_app(for_update=True)``), so
concurrent changes apply one after another: of a promote and a rollback racing, the second finds no rollout.
"""

from __future__ import annotations

import difflib
from datetime import datetime
from typing import Any

from sqlalchemy import case, func
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.console.service.common import Principal, get_app, publish_change
from shared.context import Context
from shared.db import Database
from shared.errors import ApiError, invalid_param, not_found
from shared.knowledge.models import DatasetConfigs
from shared.models import (
    Account,
    ApiToken,
    App,
    AppDatasetJoin,
    AppModelConfig,
    Message,
    MessageFeedback,
    ts,
    utcnow,
)

# basic modes keep their config in app_model_configs; graph modes use workflows
MODEL_CONFIG_MODES = ("chat", "agent-chat", "completion")


def basic_mode(app: App) -> None:
    if app.mode not in MODEL_CONFIG_MODES:
        raise ApiError(400, "app_unavailable", "App unavailable, please check your app configurations.")


def actor(p: Principal) -> str:
    """Who is recorded as the author: the account, or the admin key for a key caller."""
    return getattr(p, "key_id", None) or p.account_id


def _no_rollout() -> ApiError:
    return ApiError(400, "rollout_not_active", "No rollout is running for this app.")


# ---- writing versions (called by apps.save_model_config inside its transaction) --------------------------


async def add_version(s: AsyncSession, app: App, config: dict[str, Any], p: Principal,
                      note: str | None) -> AppModelConfig:
    """A new version numbered after the app's last one: published (and current) at once, or a draft when the
    app requires confirmation. The caller holds the app's lock (``get_app(for_update=True)``): the last number
    read here is final until it commits."""
    last = (await s.exec(select(func.max(AppModelConfig.version)).where(AppModelConfig.app_id == app.id))).one()
    row = AppModelConfig(app_id=app.id, config=config, created_by=actor(p), note=note, version=(last or 0) + 1,
                         status="draft" if app.publish_requires_confirmation else "published")
    s.add(row)
    if row.status == "published":
        row.published_by, row.published_at = row.created_by, row.created_at
        app.app_model_config_id = row.id
        await sync_dataset_links(s, app, {row.id: config})
    app.updated_at = utcnow()
    return row


async def sync_dataset_links(s: AsyncSession, app: App, known: dict[str, dict[str, Any]] | None = None) -> None:
    """Link the datasets of every version being served (current and rollout candidate): a dataset they use
    cannot be deleted (409 dataset_in_use)."""
    known = dict(known or {})
    served = [i for i in (app.app_model_config_id, app.rollout_config_id) if i]
    missing = [i for i in served if i not in known]
    if missing:
        known.update(dict((await s.exec(select(AppModelConfig.id, AppModelConfig.config)
                                        .where(col(AppModelConfig.id).in_(missing)))).all()))
    dataset_ids: list[str] = []
    for config_id in served:
        try:
            ids = DatasetConfigs.model_validate((known.get(config_id) or {}).get("dataset_configs") or {}).dataset_ids()
        except ValueError:  # validated when saved; an unreadable old row links nothing
            ids = []
        dataset_ids += [i for i in ids if i not in dataset_ids]
    await s.exec(delete(AppDatasetJoin).where(AppDatasetJoin.app_id == app.id))
    for ds_id in dataset_ids:
        s.add(AppDatasetJoin(app_id=app.id, dataset_id=ds_id))


def _mark_published(row: AppModelConfig, p: Principal) -> None:
    if row.status != "published":
        row.status, row.published_by, row.published_at = "published", actor(p), utcnow()


# ---- views ------------------------------------------------------------------------------------------


async def _authors(s: AsyncSession, ids: set[str]) -> dict[str, dict[str, Any]]:
    """Who an id in created_by/published_by is: an account, or a workspace admin key."""
    ids.discard(None)  # type: ignore[arg-type]
    if not ids:
        return {}
    found = {a.id: {"id": a.id, "type": "account", "name": a.name, "email": a.email}
             for a in await s.exec(select(Account).where(col(Account.id).in_(ids)))}
    rest = ids - found.keys()
    if rest:
        for key_id, name, hint in await s.exec(select(ApiToken.id, ApiToken.name, ApiToken.token_hint)
                                               .where(col(ApiToken.id).in_(rest))):
            found[key_id] = {"id": key_id, "type": "admin_key", "name": name or hint, "email": None}
    return found


def _who(authors: dict[str, dict[str, Any]], ident: str | None) -> dict[str, Any] | None:
    return authors.get(ident) or ({"id": ident, "type": "unknown", "name": None, "email": None} if ident else None)


def _view(row: AppModelConfig, app: App, authors: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def who(ident: str | None) -> dict[str, Any] | None:
        return _who(authors, ident)

    return {
        "id": row.id, "version": row.version, "status": row.status, "note": row.note,
        "is_current": row.id == app.app_model_config_id, "is_candidate": row.id == app.rollout_config_id,
        "created_by": who(row.created_by), "created_at": ts(row.created_at),
        "published_by": who(row.published_by), "published_at": ts(row.published_at),
    }


async def _views(s: AsyncSession, app: App, rows: list[AppModelConfig]) -> list[dict[str, Any]]:
    authors = await _authors(s, {i for r in rows for i in (r.created_by, r.published_by) if i})
    return [_view(r, app, authors) for r in rows]


async def _version(s: AsyncSession, app: App, ref: str) -> AppModelConfig:
    """A version of this app by id, or by number."""
    q = select(AppModelConfig).where(AppModelConfig.app_id == app.id)
    q = q.where(AppModelConfig.version == int(ref)) if ref.isdecimal() and len(ref) < 10 else \
        q.where(AppModelConfig.id == ref)
    row = (await s.exec(q)).first()
    if row is None:
        raise not_found("Version not found.")
    return row


async def _basic_app(s: AsyncSession, p: Principal, app_id: str, *, for_update: bool = False) -> App:
    app = await get_app(s, p.tenant_id, app_id, for_update=for_update)
    basic_mode(app)
    return app


# ---- diff -------------------------------------------------------------------------------------------


def _pointer(path: str, key: Any) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def diff(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """JSON-Patch-like changes from ``old`` to ``new`` (paths are JSON Pointers): objects key by key, lists
    of equal length item by item, anything else replaced whole. A changed multi-line string also gets
    ``text_diff``, its unified diff, so a prompt edit reads as lines."""
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict[str, Any]] = []
        for k in old:
            if k not in new:
                ops.append({"op": "remove", "path": _pointer(path, k), "old": old[k]})
        for k in new:
            if k not in old:
                ops.append({"op": "add", "path": _pointer(path, k), "value": new[k]})
            else:
                ops += diff(old[k], new[k], _pointer(path, k))
        return ops
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [op for i, (a, b) in enumerate(zip(old, new, strict=True)) for op in diff(a, b, _pointer(path, i))]
    if old == new and type(old) is type(new):
        return []
    op = {"op": "replace", "path": path, "old": old, "value": new}
    if isinstance(old, str) and isinstance(new, str) and ("\n" in old or "\n" in new):
        op["text_diff"] = list(difflib.unified_diff(old.splitlines(), new.splitlines(), "old", "new", lineterm=""))
    return [op]


# ---- versions API -----------------------------------------------------------------------------------


async def list_versions(db: Database, p: Principal, app_id: str, *, page: int, limit: int) -> dict[str, Any]:
    async with db.session() as s:
        app = await _basic_app(s, p, app_id)
        where = AppModelConfig.app_id == app.id
        total = (await s.exec(select(func.count()).select_from(AppModelConfig).where(where))).one()
        rows = list(await s.exec(select(AppModelConfig).where(where).order_by(col(AppModelConfig.version).desc())
                                 .offset((page - 1) * limit).limit(limit)))
        data = await _views(s, app, rows)
    return {"page": page, "limit": limit, "total": total, "has_more": page * limit < total, "data": data}


async def get_version(db: Database, p: Principal, app_id: str, version_id: str, against: str | None
                      ) -> dict[str, Any]:
    """One version with its config and the changes from ``against`` (default: the version before it)."""
    async with db.session() as s:
        app = await _basic_app(s, p, app_id)
        row = await _version(s, app, version_id)
        if against is not None:
            base = await _version(s, app, against)
        else:
            base = (await s.exec(select(AppModelConfig).where(
                AppModelConfig.app_id == app.id, AppModelConfig.version < row.version)
                .order_by(col(AppModelConfig.version).desc()).limit(1))).first()
        views = await _views(s, app, [row])
    return {**views[0], "model_config": row.config,
            "diff": {"against": {"id": base.id, "version": base.version} if base else None,
                     "changes": diff(base.config if base else {}, row.config)}}


async def publish(ctx: Context, p: Principal, app_id: str, version_id: str) -> dict[str, Any]:
    """Confirm a draft, or go back to an earlier version: it becomes the current version. A rollout whose
    candidate this is ends (the candidate is now what everyone gets)."""
    async with ctx.db.session() as s:
        app = await _basic_app(s, p, app_id, for_update=True)
        row = await _version(s, app, version_id)
        _mark_published(row, p)
        app.app_model_config_id = row.id
        if app.rollout_config_id == row.id:
            _end_rollout(app)
        app.updated_at = utcnow()
        await sync_dataset_links(s, app, {row.id: row.config})
        await s.commit()
        view = (await _views(s, app, [row]))[0]
    await publish_change(ctx.bus, "app", app.id, tenant_id=app.tenant_id)
    return view


# ---- rollouts -----------------------------------------------------------------------------------------


def _end_rollout(app: App) -> None:
    app.rollout_config_id, app.rollout_percentage = None, 0.0
    app.rollout_started_at = app.rollout_started_by = None


async def _stats(s: AsyncSession, app: App, ids: list[str], since: datetime | None) -> list[dict[str, Any]]:
    """Per version: messages, errors, feedback and latency (of the messages that finished normally).
    Counts and the average in one grouped query; p50 exactly, by an ORDER BY … OFFSET per version.
    Both are portable across SQLite and Postgres."""
    where = [Message.app_id == app.id, col(Message.model_config_id).in_(ids)]
    if since is not None:
        where.append(Message.created_at >= since)
    normal = Message.status == "normal"
    counts = {vid: (n, errors or 0, ok or 0, avg) for vid, n, errors, ok, avg in await s.exec(
        select(Message.model_config_id, func.count(), func.sum(case((Message.status == "error", 1), else_=0)),
               func.sum(case((normal, 1), else_=0)), func.avg(case((normal, Message.latency), else_=None)))
        .where(*where).group_by(Message.model_config_id))}
    ratings: dict[tuple[str, str], int] = {(vid, rating): n for vid, rating, n in await s.exec(
        select(Message.model_config_id, MessageFeedback.rating, func.count())
        .join(Message, Message.id == MessageFeedback.message_id)
        .where(*where).group_by(Message.model_config_id, MessageFeedback.rating))}
    out = []
    for vid in ids:
        n, errors, ok, avg = counts.get(vid, (0, 0, 0, None))
        p50 = None
        if ok:
            middle = list(await s.exec(select(Message.latency).where(*where, Message.model_config_id == vid, normal)
                                       .order_by(Message.latency).offset((ok - 1) // 2).limit(2 - ok % 2)))
            p50 = sum(middle) / len(middle) if middle else None
        out.append({"version_id": vid, "messages": n, "errors": errors, "likes": ratings.get((vid, "like"), 0),
                    "dislikes": ratings.get((vid, "dislike"), 0),
                    "latency_avg": round(avg, 6) if avg is not None else None,
                    "latency_p50": round(p50, 6) if p50 is not None else None})
    return out


async def _rollout_view(s: AsyncSession, app: App) -> dict[str, Any]:
    ids = [i for i in (app.app_model_config_id, app.rollout_config_id) if i]
    rows = {r.id: r for r in await s.exec(select(AppModelConfig).where(col(AppModelConfig.id).in_(ids)))}
    views = {v["id"]: v for v in await _views(s, app, list(rows.values()))}
    active = app.rollout_config_id is not None
    starter = app.rollout_started_by
    return {
        "active": active,
        "percentage": app.rollout_percentage if active else 0,
        "started_at": ts(app.rollout_started_at),
        "started_by": _who(await _authors(s, {starter}), starter) if starter else None,
        "current": views.get(app.app_model_config_id or ""),
        "candidate": views.get(app.rollout_config_id or ""),
        # during a rollout: both versions since it started (the same window); otherwise the current, all time
        "stats": await _stats(s, app, ids, app.rollout_started_at if active else None) if ids else [],
    }


async def get_rollout(db: Database, p: Principal, app_id: str) -> dict[str, Any]:
    async with db.session() as s:
        return await _rollout_view(s, await _basic_app(s, p, app_id))


async def start_rollout(ctx: Context, p: Principal, app_id: str, version_id: str, percentage: float
                        ) -> dict[str, Any]:
    """Serve ``version_id`` to ``percentage`` % of new conversations. Called again with the same candidate it
    changes the share (conversations keep the version they got; the window of the stats stays); with another
    candidate it starts over. Starting a rollout of a draft is its confirmation."""
    async with ctx.db.session() as s:
        app = await _basic_app(s, p, app_id, for_update=True)
        row = await _version(s, app, version_id)
        if app.app_model_config_id is None:
            raise invalid_param("The app has no published version to compare with; publish one first.",
                                params="version_id")
        if row.id == app.app_model_config_id:
            raise invalid_param("This version is already the current one.", params="version_id")
        _mark_published(row, p)
        if app.rollout_config_id != row.id:
            app.rollout_config_id, app.rollout_started_at, app.rollout_started_by = row.id, utcnow(), actor(p)
        app.rollout_percentage = percentage
        app.updated_at = utcnow()
        await sync_dataset_links(s, app, {row.id: row.config})
        await s.commit()
        view = await _rollout_view(s, app)
    await publish_change(ctx.bus, "app", app.id, tenant_id=app.tenant_id)
    return view


async def end_rollout(ctx: Context, p: Principal, app_id: str, *, promote: bool) -> dict[str, Any]:
    """Promote (the candidate becomes the current version for everyone) or roll back (everyone goes back to
    the current one). Returns the stats of the finished rollout beside the new state. Of two racing, the one
    that takes the lock second finds the rollout over: 400 rollout_not_active."""
    async with ctx.db.session() as s:
        app = await _basic_app(s, p, app_id, for_update=True)
        if app.rollout_config_id is None:
            raise _no_rollout()
        final = await _rollout_view(s, app)
        if promote:
            app.app_model_config_id = app.rollout_config_id
        _end_rollout(app)
        app.updated_at = utcnow()
        await sync_dataset_links(s, app)
        await s.commit()
        view = await _rollout_view(s, app)
    await publish_change(ctx.bus, "app", app.id, tenant_id=app.tenant_id)
    return {**view, "result": "promoted" if promote else "rolled_back", "finished_rollout": final}


# ---- the app's publishing setting -----------------------------------------------------------------------


async def get_settings(db: Database, p: Principal, app_id: str) -> dict[str, Any]:
    async with db.session() as s:
        app = await _basic_app(s, p, app_id)
    return {"publish_requires_confirmation": app.publish_requires_confirmation}


async def set_settings(ctx: Context, p: Principal, app_id: str, *, publish_requires_confirmation: bool
                       ) -> dict[str, Any]:
    """Nothing served changes: existing drafts stay drafts until published either way."""
    async with ctx.db.session() as s:
        app = await _basic_app(s, p, app_id, for_update=True)
        app.publish_requires_confirmation = publish_requires_confirmation
        app.updated_at = utcnow()
        await s.commit()
    return {"publish_requires_confirmation": publish_requires_confirmation}
