"""A small name -> object registry with helpful errors.

Every kind of pluggable thing (trainers, datasets, evaluators, components, config
extensions) has one :class:`Registry`. Objects register themselves with the decorator
when their module is imported; packages import all their modules in ``__init__``.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Any, Dict, Iterator, List, Optional

from .errors import ConfigError


def closest(name: str, candidates: List[str]) -> Optional[str]:
    """The candidate closest to ``name`` (case-insensitive), or None if nothing is close."""
    lower = {c.lower(): c for c in candidates}
    if name.lower() in lower:
        return lower[name.lower()]
    match = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.5)
    return lower[match[0]] if match else None


class Registry:
    """Maps names to classes or functions.

    >>> MODELS = Registry("model")
    >>> @MODELS.register()
    ... class Foo: ...
    >>> MODELS.get("Foo") is Foo
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, Any] = {}

    def register(self, obj: Any = None, name: Optional[str] = None) -> Any:
        """Register ``obj`` under ``name`` (default ``obj.__name__``); usable as a decorator."""

        def _do(o: Any) -> Any:
            key = name or o.__name__
            if key in self._items and self._items[key] is not o:
                raise KeyError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = o
            return o

        return _do(obj) if obj is not None else _do

    def get(self, name: str) -> Any:
        """The object registered as ``name``; a :class:`ConfigError` naming the closest one otherwise."""
        if name in self._items:
            return self._items[name]
        hint = closest(name, list(self._items))
        msg = f"unknown {self.kind} {name!r}"
        msg += f" (did you mean {hint!r}?)" if hint else f" (registered: {', '.join(sorted(self._items))})"
        raise ConfigError(msg)

    def names(self) -> List[str]:
        return sorted(self._items)

    def items(self) -> Iterator:
        return iter(sorted(self._items.items()))

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)




def import_submodules(package: str, path: Any) -> None:
    """Import every module under ``package`` (its ``__path__``), sub-packages included.

    Called by ``datasets/__init__.py`` and ``trainers/__init__.py``: this is how everything that
    registers itself (trainers, datasets, evaluators, components, config extensions) is found,
    with no hand-kept list of modules.
    """
    for info in pkgutil.iter_modules(path):
        module = importlib.import_module(f"{package}.{info.name}")
        if info.ispkg:
            import_submodules(module.__name__, module.__path__)
