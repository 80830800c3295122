"""Systems the harness can evaluate, by name.

Each entry is ``"module:function"``, a :data:`~pooledir.evaluation.systems.base.SystemFactory`
imported only when an evaluation asks for it (PLAID's needs colbert-ai).
:func:`register_system` adds another engine without touching the harness.
"""

from __future__ import annotations

import importlib

from pooledir.errors import InputError
from pooledir.evaluation.systems.base import Context, System, SystemFactory, SystemUnavailable

SYSTEMS: dict[str, str | SystemFactory] = {
    "pooledir": "pooledir.evaluation.systems.pooledir:systems",
    "plaid": "pooledir.evaluation.systems.plaid:systems",
    "fast-plaid": "pooledir.evaluation.systems.fast_plaid:systems",
    "bm25s": "pooledir.evaluation.systems.bm25s_ref:systems",
}

__all__ = ["SYSTEMS", "Context", "System", "SystemFactory", "SystemUnavailable", "get_system", "register_system"]


def register_system(name: str, factory: str | SystemFactory) -> None:
    """Make ``name`` evaluable: ``factory(**options)`` returns the systems to measure."""
    SYSTEMS[name] = factory


def get_system(name: str) -> SystemFactory:
    """The factory registered as ``name``; an unknown name lists the known ones."""
    entry = SYSTEMS.get(name)
    if entry is None:
        raise InputError(f"unknown system {name!r}; known systems: {', '.join(sorted(SYSTEMS))}")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry
