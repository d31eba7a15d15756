"""Workspace plans: the default per-app request limits of each plan, and how an app's own settings
combine with them (see docs/limits.md).

One table, in code (seed 004 §3.1.2). Per app and per rolling window:

=============  =====  ======  =======
plan           RPM    RPH     RPD
=============  =====  ======  =======
sandbox        60     1,000   10,000
professional   300    10,000  100,000
team           600    30,000  300,000
enterprise     custom: the workspace's ``custom_limits``; none set = unlimited
=============  =====  ======  =======

An app's ``api_rpm`` / ``api_rph`` / ``api_rpd`` override its plan, window by window:
``None`` (NULL) = the plan's value, ``0`` = unlimited, ``> 0`` = that limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.limiter import AppLimits

SANDBOX = "sandbox"
PROFESSIONAL = "professional"
TEAM = "team"
ENTERPRISE = "enterprise"


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """Per-app default limits of a plan; 0 = unlimited."""

    rpm: int = 0
    rph: int = 0
    rpd: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"rpm": self.rpm, "rph": self.rph, "rpd": self.rpd}


UNLIMITED = PlanLimits()
PLANS: dict[str, PlanLimits] = {
    SANDBOX: PlanLimits(60, 1_000, 10_000),
    PROFESSIONAL: PlanLimits(300, 10_000, 100_000),
    TEAM: PlanLimits(600, 30_000, 300_000),
    ENTERPRISE: UNLIMITED,  # custom: see plan_limits
}
PLAN_NAMES = tuple(PLANS)
# plans whose limits the workspace sets itself
CUSTOM_PLANS = frozenset({ENTERPRISE})
WINDOWS = ("rpm", "rph", "rpd")


def plan_limits(plan: str | None, custom: dict[str, Any] | None = None) -> PlanLimits:
    """The defaults a workspace's apps get. An unknown plan name (only a hand-edited row can hold one:
    the console validates) has no defaults, like a self-hosted install."""
    if plan in CUSTOM_PLANS:
        if not custom:
            return UNLIMITED
        return PlanLimits(*(_count(custom.get(w)) for w in WINDOWS))
    return PLANS.get(plan or "", UNLIMITED)


def _count(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def _pick(override: int | None, default: int) -> int:
    return default if override is None else max(0, override)


def effective_limits(defaults: PlanLimits, rpm: int | None, rph: int | None, rpd: int | None,
                     max_active: int | None = None) -> AppLimits:
    """The limits the gateway applies to one app: its overrides over its plan's defaults."""
    return AppLimits(_pick(rpm, defaults.rpm), _pick(rph, defaults.rph), max_active or 0,
                     _pick(rpd, defaults.rpd))
