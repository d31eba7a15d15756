"""How `make test` spreads the suite over pytest-xdist workers (``-n N --dist loadscope``).

xdist's loadscope hands each worker whole modules, so a module's shared stack (the module-scoped ``live``
fixture) starts once. Two changes to it:

- A module's Postgres tests are a unit of their own. The SQLite and Postgres halves of one module can run
  on two workers at once, each starting only its own stack; pytest already runs a module's tests grouped by
  that parameter.
- Units are handed out longest first: modules marked ``heavy`` (minutes of work), then by their number of
  tests. Otherwise a long module that comes last runs alone while the other workers sit idle.
"""

from __future__ import annotations

import os
import re

import pytest

# the "postgres" id of tests.conftest.db_params, alone or among a test's other parameter ids
_POSTGRES = re.compile(r"(?<=[\[-])postgres(?=[-\]])")


def units(nodeids: list[str]) -> dict[str, str]:
    """The unit of work of each test: its module (or class), split by database. A test on Postgres is in its
    module's Postgres unit only when its SQLite twin is collected too: another parameter named "postgres"
    (the topology's service to restart, say) does not split a module."""
    collected = set(nodeids)
    out = {}
    for nodeid in nodeids:
        scope = nodeid.rsplit("::", 1)[0]
        on_postgres = _POSTGRES.search(nodeid) and _POSTGRES.sub("sqlite", nodeid, count=1) in collected
        out[nodeid] = f"{scope}[postgres]" if on_postgres else scope
    return out


@pytest.hookimpl(trylast=True)  # after pytest's own fixture-based ordering, which it keeps within a unit
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a plain run keeps pytest's order
    unit_of = units([item.nodeid for item in items])
    grouped: dict[str, list[pytest.Item]] = {}
    for item in items:
        grouped.setdefault(unit_of[item.nodeid], []).append(item)
    # every worker collects and orders the same way: the controller checks that the collections agree
    ordered = sorted(grouped.values(), key=lambda u: (not any(i.get_closest_marker("heavy") for i in u), -len(u)))
    items[:] = [item for unit in ordered for item in unit]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        _units: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._units is None:  # called once the workers' (identical) collection is known
                self._units = units(self.collection or [])
            return self._units[nodeid]

    config.option.loadscopereorder = False  # the workers' collection order above is the schedule
    return UnitScheduling(config, log)
