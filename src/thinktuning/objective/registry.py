"""Name -> function registries, the way verl registers its losses: an ablation is one config value.

Shared by ``advantages`` (estimators) and ``loss`` (shapings, aggregations) so that registering and looking up
behave, and fail, the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


def register(registry: dict[str, Callable[..., object]], kind: str, name: str) -> Callable[[F], F]:
    """Decorator filing a function under ``name``; refuses duplicate names so that an ablation never
    silently runs a different function than its config names."""

    def decorator(fn: F) -> F:
        if name in registry:
            raise ValueError(f"{kind} {name!r} is already registered")
        registry[name] = fn
        return fn

    return decorator


def lookup(registry: dict[str, Callable[..., object]], kind: str, name: str) -> Callable[..., object]:
    """Registry lookup whose error lists the valid names, so a typo in a config is fixed in one go."""
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry))
        raise ValueError(f"unknown {kind} {name!r}; registered: {known}") from None
