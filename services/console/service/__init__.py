"""Console business logic (no HTTP types): accounts and sign-in, apps, keys, provider credentials."""

from services.console.service.accounts import is_setup_done, setup_account

__all__ = ["is_setup_done", "setup_account"]
