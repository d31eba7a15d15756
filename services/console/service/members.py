"""Workspace members (Dify's console shapes): list, invite by email, activate, change role, remove, transfer
ownership; and the caller's workspaces (list, switch, rename).

Who may call which route is decided by the route table in services/console/api.py; the rules here depend on
the member acted on: the owner changes only by transfer, only the owner makes or removes admins, nobody changes
or removes themself. There is no mail: an invitation answers with its activation token and URL.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from services.console.auth import Auth, TokenPair, hash_password
from services.console.service.accounts import check_attempt_limit, check_email, check_password, verify_attempt
from services.console.service.common import RANK, Principal
from shared.context import Context
from shared.crypto import hash_token
from shared.db import Database, lock_rows
from shared.errors import ApiError, forbidden, invalid_param, not_found
from shared.models import Account, Tenant, TenantMember, utcnow

INVITABLE_ROLES = ("normal", "editor", "admin")
UNUSABLE_HASH = "!"  # no argon2 hash looks like this: a pending account cannot sign in
OWNER_BY_TRANSFER = "The owner changes only by ownership transfer."
ONLY_OWNER_ADMINS = "Only the workspace owner can make, change or remove admins."
ACTIVE_ACCOUNT_PASSWORD = ("This email already has an account: enter that account's password to accept the "
                           "invitation.")


def _check_role(role: str) -> str:
    if role == "owner":
        raise invalid_param("A member becomes owner only by ownership transfer.", params="role")
    if role not in INVITABLE_ROLES:
        raise invalid_param(f"Invalid role {role!r}; one of: {', '.join(INVITABLE_ROLES)}.", params="role")
    return role


async def _member(s: Any, tenant_id: str, account_id: str) -> TenantMember:
    m = (await s.exec(select(TenantMember).where(TenantMember.tenant_id == tenant_id,
                                                 TenantMember.account_id == account_id))).first()
    if m is None:
        raise not_found("Member not found.")
    return m


async def _lock_workspace(s: AsyncSession, tenant_id: str) -> None:
    """Lock the workspace row until the session's transaction ends, so that invitations, role changes, removals
    and transfers in it apply one after another, each reading what the one before wrote. Call it first."""
    await lock_rows(s, Tenant, (Tenant.id == tenant_id,), Tenant.name)


async def _locked_caller_role(s: AsyncSession, p: Principal) -> str:
    """Lock the workspace and re-read the caller's role under the lock: the route table saw the role of a moment
    ago, and the rules about admins must use the role the caller has now. 403 when it is no longer an admin or
    more."""
    await _lock_workspace(s, p.tenant_id)
    role = (await s.exec(select(TenantMember.role).where(TenantMember.tenant_id == p.tenant_id,
                                                         TenantMember.account_id == p.account_id,
                                                         TenantMember.status == "active"))).first()
    if role is None:
        raise forbidden("You are no longer a member of this workspace.")
    if RANK.get(role, -1) < RANK["admin"]:  # the least role of every route that changes members (api.ACCESS)
        raise forbidden(f"This action requires the admin role or higher; your role in this workspace is {role}.")
    return role


# ---- members ----------------------------------------------------------------------------------------


async def list_members(db: Database, p: Principal) -> list[tuple[Account, TenantMember]]:
    async with db.session() as s:
        return list(await s.exec(
            select(Account, TenantMember).join(TenantMember, TenantMember.account_id == Account.id)
            .where(TenantMember.tenant_id == p.tenant_id)
            .order_by(col(TenantMember.created_at), col(TenantMember.id))))


def _activation_url(base: str, tenant_id: str, email: str, token: str) -> str:
    query = urlencode({"workspace_id": tenant_id, "email": email, "token": token})
    return f"{base}/console/api/activate/check?{query}"


async def invite(ctx: Context, p: Principal, emails: list[str], role: str, base: str) -> list[dict[str, Any]]:
    """Invitation results in Dify's shape; a new email gets a pending account and an activation token, an
    existing account is added at once (it signs in as before and switches workspace)."""
    role = _check_role(role)
    if role == "admin" and not p.at_least("owner"):
        raise forbidden(ONLY_OWNER_ADMINS)
    checked = list(dict.fromkeys(check_email(e) for e in emails))  # 400 for a bad one, before any change
    expires = utcnow() + timedelta(hours=ctx.settings.auth.invitation_expiry_hours)
    results = []
    for email in checked:
        results.append(await _invite_one(ctx.db, p, email, role, expires, base))
    return results


async def _invite_one(db: Database, p: Principal, email: str, role: str, expires: Any, base: str) -> dict:
    # Two invitations of one new email in two workspaces (the workspace lock does not cover them) can both find
    # no account: the second insert hits the unique email, and a second try finds the first one's account.
    try:
        return await _try_invite_one(db, p, email, role, expires, base)
    except IntegrityError:
        return await _try_invite_one(db, p, email, role, expires, base)


async def _try_invite_one(db: Database, p: Principal, email: str, role: str, expires: Any, base: str) -> dict:
    token = secrets.token_urlsafe(32)
    async with db.session() as s:
        my_role = await _locked_caller_role(s, p)
        if role == "admin" and my_role != "owner":
            raise forbidden(ONLY_OWNER_ADMINS)
        account = (await s.exec(select(Account).where(Account.email == email))).first()
        if account is not None and account.status == "banned":
            return {"status": "failed", "email": email, "message": "Account is banned."}
        member = None
        if account is None:
            account = Account(email=email, name=email.split("@")[0][:255], password_hash=UNUSABLE_HASH,
                              status="pending")
            s.add(account)
        else:
            member = (await s.exec(select(TenantMember).where(TenantMember.tenant_id == p.tenant_id,
                                                              TenantMember.account_id == account.id))).first()
        if member is not None and member.status == "active":
            return {"status": "failed", "email": email, "message": "The account is already a member."}
        if member is not None and member.role == "admin" and my_role != "owner":
            # re-inviting would change an admin's role and token
            return {"status": "failed", "email": email, "message": ONLY_OWNER_ADMINS}
        pending = account.status == "pending"
        if member is None:
            has_current = account.status == "active" and (await s.exec(
                select(TenantMember.id).where(TenantMember.account_id == account.id, col(TenantMember.current))
            )).first() is not None
            member = TenantMember(tenant_id=p.tenant_id, account_id=account.id, role=role,
                                  current=not has_current)
            s.add(member)
        member.role = role
        member.invited_by = p.account_id or None
        if pending:  # re-inviting a pending member issues a new token; the old one stops working
            member.status = "pending"
            member.invite_token_hash = hash_token(token)
            member.invite_expires_at = expires
        else:
            member.status = "active"
        await s.commit()
    if not pending:
        return {"status": "success", "email": email, "url": None, "token": None}
    return {"status": "success", "email": email, "url": _activation_url(base, p.tenant_id, email, token),
            "token": token}


async def _invitation(s: Any, token: str, email: str | None, workspace_id: str | None
                      ) -> tuple[TenantMember, Account, Tenant] | None:
    row = (await s.exec(
        select(TenantMember, Account, Tenant)
        .join(Account, Account.id == TenantMember.account_id).join(Tenant, Tenant.id == TenantMember.tenant_id)
        .where(TenantMember.invite_token_hash == hash_token(token), TenantMember.status == "pending"))).first()
    if row is None:
        return None
    member, account, tenant = row
    if member.invite_expires_at is None or member.invite_expires_at <= utcnow():
        return None
    if (email and email.strip().lower() != account.email) or (workspace_id and workspace_id != tenant.id):
        return None
    return member, account, tenant


async def check_invitation(db: Database, token: str, email: str | None, workspace_id: str | None) -> dict:
    async with db.session() as s:
        found = await _invitation(s, token, email, workspace_id)
    if found is None:
        return {"is_valid": False, "data": None}
    _, account, tenant = found
    return {"is_valid": True, "data": {"workspace_name": tenant.name, "workspace_id": tenant.id,
                                       "email": account.email}}


async def activate(db: Database, auth: Auth, *, token: str, name: str, password: str, email: str | None,
                   workspace_id: str | None) -> TokenPair:
    """Spend an invitation token: a pending account gets its name and password; an account that is already
    active (through another workspace's invitation) keeps both and must give its password, as at sign-in: the
    token alone is no proof, the inviter saw it. Then the membership goes active. A wrong password leaves the
    token unspent and counts against the email's sign-in limit."""
    name = name.strip()
    if not 1 <= len(name) <= 255:
        raise invalid_param("name must be 1 to 255 characters.", params="name")
    async with db.session() as s:
        found = await _invitation(s, token, email, workspace_id)
    if found is None:
        raise _invalid_invitation()
    seen = found[1]
    # hashed and verified with no connection held: argon2 takes tens of milliseconds
    password_hash = None
    if seen.status == "pending":
        check_password(password)
        password_hash = await hash_password(password)
    elif seen.status == "active":
        await check_attempt_limit(auth, seen.email)
        await verify_attempt(auth, seen.email, seen.password_hash, password, ACTIVE_ACCOUNT_PASSWORD)
        await auth.limiter.reset(seen.email)
    else:
        raise ApiError(403, "account_banned", "Account is banned.")
    async with db.session() as s:
        found = await _invitation(s, token, email, workspace_id)
        if found is None:
            raise _invalid_invitation()  # spent meanwhile
        member, account, _ = found
        if (account.status, account.password_hash) != (seen.status, seen.password_hash):
            # activated, banned or given a new password meanwhile: decide again on what it is now
            return await activate(db, auth, token=token, name=name, password=password, email=email,
                                  workspace_id=workspace_id)
        member.status = "active"
        member.invite_token_hash = None
        member.invite_expires_at = None
        if password_hash is not None:
            account.status = "active"
            account.name = name
            account.password_hash = password_hash
        account.last_login_at = utcnow()
        await s.commit()
        account_id = account.id
    return auth.tokens.issue(account_id)


def _invalid_invitation() -> ApiError:
    return ApiError(400, "invalid_token", "The invitation link is invalid or has expired.")


async def _locked_non_owner(s: AsyncSession, p: Principal, account_id: str, owner_message: str
                            ) -> tuple[TenantMember, str]:
    """The member ``account_id`` of the caller's workspace and the caller's role, both read with the workspace
    row locked (``_locked_caller_role``); the owner is refused with ``owner_message``."""
    my_role = await _locked_caller_role(s, p)
    member = await _member(s, p.tenant_id, account_id)
    if member.role == "owner":
        raise forbidden(owner_message)
    return member, my_role


async def update_role(ctx: Context, p: Principal, account_id: str, role: str) -> None:
    role = _check_role(role)
    if account_id == p.account_id:
        raise forbidden("You cannot change your own role.")
    async with ctx.db.session() as s:
        member, my_role = await _locked_non_owner(s, p, account_id, OWNER_BY_TRANSFER)
        if "admin" in (member.role, role) and my_role != "owner":
            raise forbidden(ONLY_OWNER_ADMINS)
        member.role = role
        await s.commit()


async def remove(ctx: Context, p: Principal, account_id: str) -> None:
    """Remove a member; from the next request on its tokens no longer reach this workspace. A pending account
    invited nowhere else goes too."""
    if account_id == p.account_id:
        raise forbidden("You cannot remove yourself from the workspace.")
    async with ctx.db.session() as s:
        member, my_role = await _locked_non_owner(s, p, account_id,
                                                  "The owner cannot be removed; transfer the ownership first.")
        if member.role == "admin" and my_role != "owner":
            raise forbidden(ONLY_OWNER_ADMINS)
        await s.delete(member)
        account = await s.get(Account, account_id)
        others = (await s.exec(select(TenantMember).where(TenantMember.account_id == account_id,
                                                          TenantMember.id != member.id))).all()
        if account is not None and account.status == "pending" and not others:
            await s.delete(account)
        elif member.current and others:
            others[0].current = True
        await s.commit()


async def transfer_owner(ctx: Context, p: Principal, account_id: str) -> None:
    """The member becomes the owner; the former owner stays as an admin."""
    if account_id == p.account_id:
        raise forbidden("You already own this workspace.")
    async with ctx.db.session() as s:
        await _lock_workspace(s, p.tenant_id)
        me = await _member(s, p.tenant_id, p.account_id)
        if me.role != "owner":  # re-read under the lock: the route table saw the role of a moment ago
            raise forbidden("Only the workspace owner can transfer the ownership.")
        member = await _member(s, p.tenant_id, account_id)
        if member.status != "active":
            raise invalid_param("The new owner must have activated their account.", params="member_id")
        member.role, me.role = "owner", "admin"
        await s.commit()


# ---- the caller's workspaces -------------------------------------------------------------------------


def workspace_json(t: Tenant, role: str | None = None, current: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": t.id, "name": t.name, "plan": t.plan, "status": t.status,
                           "created_at": int(t.created_at.timestamp())}
    if role is not None:
        out["role"] = role
    if current is not None:
        out["current"] = current
    return out


async def list_workspaces(db: Database, p: Principal) -> list[dict[str, Any]]:
    async with db.session() as s:
        rows = (await s.exec(
            select(Tenant, TenantMember).join(TenantMember, TenantMember.tenant_id == Tenant.id)
            .where(TenantMember.account_id == p.account_id, TenantMember.status == "active")
            .order_by(col(TenantMember.created_at)))).all()
    return [workspace_json(t, m.role, t.id == p.tenant_id) for t, m in rows]


async def current_workspace(db: Database, p: Principal) -> dict[str, Any]:
    async with db.session() as s:
        tenant = await s.get(Tenant, p.tenant_id)
    if tenant is None:
        raise not_found("Workspace not found.")
    return workspace_json(tenant, p.role)


async def switch_workspace(db: Database, p: Principal, tenant_id: str) -> dict[str, Any]:
    async with db.session() as s:
        target = (await s.exec(select(TenantMember, Tenant).join(Tenant, Tenant.id == TenantMember.tenant_id)
                               .where(TenantMember.account_id == p.account_id, TenantMember.tenant_id == tenant_id,
                                      TenantMember.status == "active"))).first()
        if target is None:
            raise not_found("Workspace not found.")
        await s.exec(update(TenantMember).where(TenantMember.account_id == p.account_id)
                     .values(current=TenantMember.tenant_id == tenant_id))
        await s.commit()
        member, tenant = target
        return workspace_json(tenant, member.role, True)


async def rename_workspace(db: Database, p: Principal, name: str) -> dict[str, Any]:
    name = name.strip()
    if not 1 <= len(name) <= 255:
        raise invalid_param("name must be 1 to 255 characters.", params="name")
    async with db.session() as s:
        tenant = await s.get(Tenant, p.tenant_id)
        if tenant is None:
            raise not_found("Workspace not found.")
        tenant.name = name
        await s.commit()
        return workspace_json(tenant, p.role)
