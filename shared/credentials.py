"""A workspace's provider credentials, decrypted for a call (the console stores them encrypted)."""

from __future__ import annotations

from typing import Any

import structlog
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.crypto import decrypt_json
from shared.llm import canonical_provider
from shared.models import ProviderCredential

log = structlog.get_logger("plexus.credentials")


async def provider_credentials(s: AsyncSession, secret_key: str | None, tenant_id: str, provider: str
                               ) -> dict[str, Any] | None:
    """The credentials saved for ``provider`` (or its canonical litellm name); None when there are none
    or they cannot be decrypted (a rotated secret key or a corrupt row: the provider is not usable)."""
    names = {provider, canonical_provider(provider)}
    rows = (await s.exec(
        select(ProviderCredential.provider, ProviderCredential.encrypted_credentials).where(
            ProviderCredential.tenant_id == tenant_id, ProviderCredential.provider.in_(names))
    )).all()
    if not rows or not secret_key:
        return None
    rows = sorted(rows, key=lambda r: r[0] != provider)  # the exact provider name wins over its alias
    try:
        return decrypt_json(secret_key, rows[0][1])
    except Exception:  # noqa: BLE001
        log.warning("provider_credentials_undecryptable", tenant_id=tenant_id, provider=provider)
        return None
