"""Console sign-in: argon2 password hashes, HS256 JWTs, CSRF tokens, login throttling and token revocation.

Throttling and revocation live in Redis when ``ctx.redis`` is set (shared by every console replica) and in
process memory otherwise (the `all` target is one process).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shared.crypto import constant_eq

ISSUER = "plexus-console"
ACCESS = "access"
REFRESH = "refresh"
# domain separation: the CSRF key is derived from the secret key, so a CSRF tag is no other HMAC of the secret
_CSRF_CONTEXT = b"plexus-console-csrf-v1"
INIT_PASS_SECONDS = 3600  # how long a right init password lets this browser or client run the setup

_hasher = PasswordHasher()
# Verified against when the email is unknown, so a miss costs as much time as a wrong password.
_DUMMY_HASH = _hasher.hash("plexus-timing-equaliser-0")


# ---- passwords (argon2 is CPU-heavy: run it off the event loop) ---------------------------------


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    def _verify() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(_verify)


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


# ---- tokens ---------------------------------------------------------------------------------------


class TokenError(Exception):
    """A token that is malformed, expired, revoked or of the wrong type."""


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    csrf_token: str  # for cookie sign-in: the X-CSRF-Token value bound to this access token (Tokens.csrf)


class Tokens:
    def __init__(self, secret_key: str, access_minutes: int, refresh_days: int) -> None:
        self._key = secret_key
        self._csrf_key = hmac.new(secret_key.encode(), _CSRF_CONTEXT, hashlib.sha256).digest()
        self.access_ttl = access_minutes * 60
        self.refresh_ttl = refresh_days * 86400

    def _encode(self, account_id: str, token_type: str, ttl: int) -> tuple[str, dict[str, Any]]:
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": account_id, "token_type": token_type, "jti": uuid.uuid4().hex,
                  "iat": now, "exp": now + ttl}
        return jwt.encode(claims, self._key, algorithm="HS256"), claims

    def issue(self, account_id: str) -> TokenPair:
        access, claims = self._encode(account_id, ACCESS, self.access_ttl)
        refresh, _ = self._encode(account_id, REFRESH, self.refresh_ttl)
        return TokenPair(access, refresh, self.csrf(claims))

    def csrf(self, claims: dict[str, Any]) -> str:
        """The CSRF token of one access token: an HMAC (key derived from the secret key) over its subject and
        its unique id. Bound to that session, valid exactly as long as the access token (expiry, revocation),
        never stored: the server recomputes it from the verified claims."""
        mac = hmac.new(self._csrf_key, f"{claims['sub']}:{claims['jti']}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def init_pass(self, password: str, now: int | None = None) -> str:
        """The ``init_validated`` cookie's value after a right init password (Dify's session flag): its expiry and
        an HMAC over it and the password, so it proves the password on any replica until then, and no longer
        once the password changes."""
        exp = (now or int(time.time())) + INIT_PASS_SECONDS
        return f"{exp}.{self._init_mac(password, exp)}"

    def check_init_pass(self, password: str, value: str | None) -> bool:
        exp, _, mac = (value or "").partition(".")
        if not (exp.isascii() and exp.isdigit()) or int(exp) < time.time():  # "²".isdigit(), yet no int
            return False
        return constant_eq(self._init_mac(password, int(exp)), mac)

    def _init_mac(self, password: str, exp: int) -> str:
        digest = hmac.new(self._csrf_key, f"init:{exp}:{password}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def check_csrf(self, claims: dict[str, Any], given: str | None) -> bool:
        """Whether ``given`` is the CSRF token of the access token ``claims`` (verified ones), in constant time."""
        if not isinstance(given, str) or not given or not claims.get("jti") or not claims.get("sub"):
            return False
        return constant_eq(self.csrf(claims), given)

    def decode(self, token: str, token_type: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(token, self._key, algorithms=["HS256"], issuer=ISSUER,
                                options={"require": ["exp", "iat", "sub", "jti", "token_type"]})
        except jwt.ExpiredSignatureError:
            raise TokenError("Token has expired.") from None
        except jwt.PyJWTError:
            raise TokenError("Invalid Authorization token.") from None
        # the type claim keeps a (long-lived) refresh token from working as an access token
        if claims.get("token_type") != token_type:
            raise TokenError("Invalid Authorization token.")
        return claims


# ---- sliding-window failure counter and revocation list ------------------------------------------


def _digest(value: str) -> str:
    # keys carry a digest, not the email or token id itself
    return hashlib.sha256(value.encode()).hexdigest()[:32]


class LoginLimiter:
    """Wrong passwords per email within a sliding window; ``retry_after`` > 0 means locked out."""

    def __init__(self, redis: Any | None, max_attempts: int, window_seconds: int) -> None:
        self.redis = redis
        self.max = max_attempts
        self.window = window_seconds
        self._mem: dict[str, deque[float]] = {}

    def _key(self, email: str) -> str:
        return f"plexus:console:login_fail:{_digest(email)}"

    def _prune(self, key: str, now: float) -> deque[float]:
        q = self._mem.get(key, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            self._mem.pop(key, None)
        return q

    async def retry_after(self, email: str) -> int:
        if self.max <= 0:
            return 0
        key, now = self._key(email), time.time()
        if self.redis is not None:
            async with self.redis.pipeline(transaction=True) as p:
                p.zremrangebyscore(key, 0, now - self.window)
                p.zcard(key)
                p.zrange(key, 0, 0, withscores=True)
                _, count, oldest = await p.execute()
            first = oldest[0][1] if oldest else now
        else:
            q = self._prune(key, now)
            count, first = len(q), (q[0] if q else now)
        if count < self.max:
            return 0
        return max(1, int(first + self.window - now) + 1)

    async def failed(self, email: str) -> None:
        key, now = self._key(email), time.time()
        if self.redis is not None:
            async with self.redis.pipeline(transaction=True) as p:
                p.zadd(key, {uuid.uuid4().hex: now})
                p.zremrangebyscore(key, 0, now - self.window)
                p.expire(key, self.window)
                await p.execute()
            return
        if len(self._mem) > 10_000:  # an email-spraying client must not grow memory without bound
            for k in list(self._mem):
                self._prune(k, now)
        self._mem.setdefault(key, deque()).append(now)

    async def reset(self, email: str) -> None:
        key = self._key(email)
        if self.redis is not None:
            await self.redis.delete(key)
        else:
            self._mem.pop(key, None)


class RevokedTokens:
    """Token ids revoked by logout or spent by refresh, kept until the token would expire anyway."""

    def __init__(self, redis: Any | None) -> None:
        self.redis = redis
        self._mem: dict[str, float] = {}

    async def revoke(self, claims: dict[str, Any]) -> None:
        ttl = int(claims["exp"] - time.time()) + 1
        if ttl <= 0:
            return
        key = f"plexus:console:revoked:{_digest(claims['jti'])}"
        if self.redis is not None:
            await self.redis.set(key, b"1", ex=ttl)
            return
        now = time.time()
        if len(self._mem) > 10_000:
            self._mem = {k: exp for k, exp in self._mem.items() if exp > now}
        self._mem[key] = now + ttl

    async def is_revoked(self, claims: dict[str, Any]) -> bool:
        key = f"plexus:console:revoked:{_digest(claims['jti'])}"
        if self.redis is not None:
            return bool(await self.redis.exists(key))
        exp = self._mem.get(key)
        return exp is not None and exp > time.time()


@dataclass
class Auth:
    """The console's sign-in machinery, built once per app."""

    tokens: Tokens
    limiter: LoginLimiter
    revoked: RevokedTokens

    @classmethod
    def from_settings(cls, settings: Any, redis: Any | None) -> Auth:
        if not settings.secret_key:
            raise RuntimeError("the console needs settings.secret_key to sign tokens")
        a = settings.auth
        return cls(Tokens(settings.secret_key, a.access_token_minutes, a.refresh_token_days),
                   LoginLimiter(redis, a.login_max_attempts, a.login_lockout_seconds),
                   RevokedTokens(redis))
