"""CLIP prompt-learning trainers; importing this package registers them with the engine."""

from __future__ import annotations

from . import cocoop, coop, maple, plpp, zsclip  # noqa: F401  (zsclip: registration only)

_CONFIG_MODULES = (coop, cocoop, maple, plpp)


def extend_cfg(cfg) -> None:
    """Declare every trainer's ``TRAINER.<NAME>`` keys on ``cfg`` (before YAML files are merged)."""
    for module in _CONFIG_MODULES:
        module.add_config(cfg)


__all__ = ["extend_cfg"]
