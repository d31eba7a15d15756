"""First-run setup, sign-in, token refresh and the caller behind a bearer token."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import and_
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select, update

from services.console.auth import (
    ACCESS,
    REFRESH,
    Auth,
    TokenError,
    TokenPair,
    hash_password,
    needs_rehash,
    verify_password,
)
from services.console.service.common import Principal
from services.console.service.keys import ADMIN_PREFIX, ADMIN_SCOPES, is_expired
from shared.crypto import constant_eq, hash_token
from shared.db import Database
from shared.errors import KEY_EXPIRED, ApiError, forbidden, invalid_param, unauthorized
from shared.identity import AUTH_INVALID
from shared.models import Account, ApiToken, Setup, Tenant, TenantMember, utcnow

# Dify's own rules (libs/helper.py), so the same inputs pass or fail.
EMAIL_RE = re.compile(r"^[\w.!#$%&'*+\-/=?^_`{|}~]+@([\w-]+\.)+[\w-]{2,}$")
PASSWORD_RE = re.compile(r"^(?=.*[a-zA-Z])(?=.*\d).{8,}$")

AUTH_FAILED = "Invalid email or password."
KEY_CREATOR_GONE = ("The member who created this admin key is no longer an admin of the workspace; "
                    "an admin must create a new key.")
KEY_CREATOR_ROLES = ("admin", "owner")
KEY_TOUCH_INTERVAL = timedelta(seconds=60)
ALREADY_SETUP = "Plexus has already been set up. Sign in instead."


def normalize_email(email: str) -> str:
    return email.strip().lower()


def check_email(email: str) -> str:
    email = normalize_email(email)
    if len(email) > 255 or not EMAIL_RE.match(email):
        raise invalid_param(f"{email} is not a valid email.", params="email")
    return email


def check_password(password: str) -> str:
    if not PASSWORD_RE.match(password):
        raise invalid_param("Password must contain letters and numbers, and the length must be at least 8.",
                            params="password")
    return password


# ---- setup ----------------------------------------------------------------------------------------


async def setup_status(db: Database) -> datetime | None:
    async with db.session() as s:
        row = (await s.exec(select(Setup))).first()
    return row.setup_at if row else None


async def is_setup_done(db: Database) -> bool:
    return await setup_status(db) is not None


async def setup_account(db: Database, *, email: str, name: str, password: str, plan: str | None = None,
                        init_validated: bool = True) -> Account:
    """Create the first account, its workspace and the owner membership, once. ``init_validated``: the caller
    proved the init password, or none is set (the CLI's ``plexus admin setup`` needs none: it runs on the host)."""
    email, password = check_email(email), check_password(password)
    name = name.strip()
    if not 1 <= len(name) <= 255:
        raise invalid_param("name must be 1 to 255 characters.", params="name")
    if await is_setup_done(db):
        raise forbidden(ALREADY_SETUP)
    if not init_validated:
        raise ApiError(401, "not_init_validated", NOT_INIT_VALIDATED)
    password_hash = await hash_password(password)
    async with db.session() as s:
        account = Account(email=email, name=name, password_hash=password_hash)
        tenant = Tenant(name=f"{name}'s Workspace", **({"plan": plan} if plan else {}))  # PLEXUS_DEFAULT_PLAN
        # the Setup row goes in the same transaction: its fixed key makes a racing second setup fail
        s.add_all([Setup(), account, tenant])
        s.add(TenantMember(tenant_id=tenant.id, account_id=account.id, role="owner", current=True))
        try:
            await s.commit()
        except IntegrityError:
            await s.rollback()
            raise forbidden(ALREADY_SETUP) from None
    return account


# ---- init password (Dify's INIT_PASSWORD) -----------------------------------------------------------
INIT_LIMIT_KEY = "init-password"  # wrong init passwords are counted like a sign-in's, under this name
INIT_FAILED = "Init validation failed. Please check the password and try again."
NOT_INIT_VALIDATED = ("Init validation has not been completed yet. Please proceed with the init validation "
                      "process first.")


async def validate_init(db: Database, auth: Auth, init_password: str | None, password: str) -> str | None:
    """``POST /init``: the init cookie's value for the right password (None: no init password is set, there is
    nothing to prove); 403 once set up, 401 ``init_validate_failed`` (counted, 429 when too many)."""
    if await is_setup_done(db):
        raise forbidden(ALREADY_SETUP)
    if init_password is None:
        return None
    await check_attempt_limit(auth, INIT_LIMIT_KEY)
    if not constant_eq(password, init_password):
        await auth.limiter.failed(INIT_LIMIT_KEY)
        raise ApiError(401, "init_validate_failed", INIT_FAILED)
    return auth.tokens.init_pass(init_password)


def init_validated(auth: Auth, init_password: str | None, cookie_value: str | None) -> bool:
    """Whether setup may go on: no init password is set, or the caller proved it (the init cookie)."""
    return init_password is None or auth.tokens.check_init_pass(init_password, cookie_value)


# ---- sign-in ------------------------------------------------------------------------------------


async def check_attempt_limit(auth: Auth, email: str) -> None:
    """429 while ``email`` is locked out after too many wrong passwords."""
    wait = await auth.limiter.retry_after(email)
    if wait:
        raise ApiError(429, "email_code_login_limit", "Too many incorrect password attempts. Please try again later.",
                       headers={"Retry-After": str(wait)})


async def verify_attempt(auth: Auth, email: str, password_hash: str | None, password: str, message: str) -> None:
    """401 ``authentication_failed`` with ``message`` when the password is wrong, counted against ``email``'s
    limit. Call with no connection held: argon2 takes tens of milliseconds."""
    if not await verify_password(password_hash, password):
        await auth.limiter.failed(email)
        raise ApiError(401, "authentication_failed", message)


async def login(db: Database, auth: Auth, *, email: str, password: str) -> TokenPair:
    email = normalize_email(email)
    await check_attempt_limit(auth, email)
    async with db.session() as s:
        account = (await s.exec(select(Account).where(Account.email == email))).first()
    await verify_attempt(auth, email, account.password_hash if account else None, password, AUTH_FAILED)
    if account.status != "active":
        raise ApiError(403, "account_banned", "Account is banned.")
    await auth.limiter.reset(email)
    values: dict = {"last_login_at": utcnow()}
    if needs_rehash(account.password_hash):
        values["password_hash"] = await hash_password(password)
    async with db.session() as s:
        await s.exec(update(Account).where(Account.id == account.id).values(**values))
        await s.commit()
    return auth.tokens.issue(account.id)


async def _claims(auth: Auth, token: str, kind: str, revoked_message: str) -> dict:
    """Verified claims of a token of ``kind``; 401 when invalid, expired, of the other kind or revoked."""
    try:
        claims = auth.tokens.decode(token, kind)
    except TokenError as e:
        raise unauthorized(str(e)) from None
    if await auth.revoked.is_revoked(claims):
        raise unauthorized(revoked_message)
    return claims


async def refresh(db: Database, auth: Auth, refresh_token: str) -> TokenPair:
    """A new pair for a valid refresh token; the old refresh token is spent (rotation)."""
    claims = await _claims(auth, refresh_token, REFRESH, revoked_message="Invalid Authorization token.")
    async with db.session() as s:
        account = await s.get(Account, claims["sub"])
    if account is None or account.status != "active":
        raise unauthorized("Invalid Authorization token.")
    await auth.revoked.revoke(claims)
    return auth.tokens.issue(account.id)


async def logout(auth: Auth, principal: Principal, refresh_token: str | None) -> None:
    await auth.revoked.revoke(principal.claims)
    if refresh_token:
        try:
            claims = auth.tokens.decode(refresh_token, REFRESH)
        except TokenError:
            return  # nothing to revoke
        if claims["sub"] == principal.account_id:
            await auth.revoked.revoke(claims)


async def authenticate(db: Database, auth: Auth, access_token: str) -> Principal:
    """The caller behind an access token (or a workspace admin key), in its current workspace; 401 for anything
    else. Read on every request, so a changed role or a removed membership counts at once."""
    if access_token.startswith(ADMIN_PREFIX):
        return await authenticate_key(db, access_token)
    claims = await _claims(auth, access_token, ACCESS, revoked_message="Token has been revoked.")
    async with db.session() as s:
        row = (await s.exec(
            select(Account, TenantMember)
            .join(TenantMember, TenantMember.account_id == Account.id)
            .where(Account.id == claims["sub"], TenantMember.status == "active")
            .order_by(TenantMember.current.desc(), TenantMember.created_at)
            .limit(1)
        )).first()
    if row is None:
        raise unauthorized("Invalid Authorization token.")
    account, member = row
    if account.status != "active":
        raise unauthorized("Account is banned.")
    return Principal(account_id=account.id, tenant_id=member.tenant_id, role=member.role, claims=claims)


async def authenticate_key(db: Database, token: str) -> Principal:
    """A workspace admin key: acts as an admin of its workspace, limited to the key's scopes, while the member
    who created (or last rotated) it is still an active admin or owner there."""
    # the creator's standing comes with the key in one query: NULL unless it is an active admin or owner
    creator = (
        select(ApiToken, Tenant.status, Account.id)
        .join(Tenant, Tenant.id == ApiToken.tenant_id)
        .outerjoin(TenantMember, and_(TenantMember.tenant_id == ApiToken.tenant_id,
                                      TenantMember.account_id == ApiToken.created_by,
                                      TenantMember.status == "active",
                                      col(TenantMember.role).in_(KEY_CREATOR_ROLES)))
        .outerjoin(Account, and_(Account.id == TenantMember.account_id, Account.status == "active"))
        .where(ApiToken.token_hash == hash_token(token), ApiToken.type == "admin")
    )
    async with db.session() as s:
        row = (await s.exec(creator)).first()
    if row is None:
        raise unauthorized(AUTH_INVALID)
    key, tenant_status, creator_id = row
    if is_expired(key):
        raise unauthorized(KEY_EXPIRED)
    if creator_id is None:
        raise unauthorized(KEY_CREATOR_GONE)
    if tenant_status in ("archived", "archive"):
        raise forbidden("The workspace's status is archived.")
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at >= KEY_TOUCH_INTERVAL:
        # at most once a minute per key, whichever replica sees it: no write on most requests
        async with db.session() as s:
            await s.exec(update(ApiToken).where(ApiToken.id == key.id).values(last_used_at=now))
            await s.commit()
    scopes = frozenset(key.permissions) if key.permissions is not None else frozenset(ADMIN_SCOPES)
    return Principal(account_id=creator_id, tenant_id=key.tenant_id, role="admin", claims={},
                     key_id=key.id, scopes=scopes)


async def get_account(db: Database, account_id: str) -> Account:
    async with db.session() as s:
        account = await s.get(Account, account_id)
    if account is None:
        raise unauthorized("Invalid Authorization token.")
    return account
