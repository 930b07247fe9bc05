"""Name → class registries that refuse duplicates and suggest the closest name on a miss."""

from __future__ import annotations

import difflib
from typing import Any, Callable


class Registry:
    """A mapping from a registered name (by default the class name) to an object."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._obj_map: dict[str, Any] = {}

    def _do_register(self, name: str, obj: Any, force: bool = False) -> None:
        if name in self._obj_map and not force:
            raise KeyError(f'An object named "{name}" was already registered in "{self._name}" registry')
        self._obj_map[name] = obj

    def register(self, obj: Any = None, force: bool = False) -> Callable | None:
        """Register ``obj`` under its ``__name__``; usable as ``@REG.register()``."""
        if obj is None:

            def wrapper(fn_or_class: Any) -> Any:
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return None

    def get(self, name: str) -> Any:
        if name not in self._obj_map:
            raise KeyError(unknown_name_message(self._name, name, self.registered_names()))
        return self._obj_map[name]

    def registered_names(self) -> list[str]:
        return list(self._obj_map.keys())

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map


def unknown_name_message(kind: str, name: str, choices: list[str]) -> str:
    """One line saying ``name`` is unknown, the closest valid names, and all choices."""
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.4)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[n] for n in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.4)]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f'Unknown {kind} "{name}".{hint} Registered: {", ".join(sorted(choices))}'


TRAINER_REGISTRY = Registry("TRAINER")
DATASET_REGISTRY = Registry("DATASET")
EVALUATOR_REGISTRY = Registry("EVALUATOR")
