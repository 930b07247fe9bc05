"""CLIP prompt-learning trainers; importing this package registers them with the engine.

On real Dassl the import also declares the ``TRAINER.<NAME>`` blocks (absent ones only) in Dassl's
default config, so a Dassl checkout's own ``train.py`` accepts them (see docs/INTEGRATION.md).
"""

from __future__ import annotations

from plpp.engine import declare_default_keys

from . import cocoop, coop, ivlp, kgcoop, linear_probe, maple, plpp, prograd, promptsrc, zsclip  # noqa: F401

# Order matters: kgcoop adds its weight to TRAINER.COOP, so it comes after coop.
_CONFIG_MODULES = (coop, cocoop, maple, ivlp, promptsrc, kgcoop, prograd, linear_probe, plpp)


def extend_cfg(cfg) -> None:
    """Declare every trainer's ``TRAINER.<NAME>`` keys on ``cfg`` (before YAML files are merged)."""
    for module in _CONFIG_MODULES:
        module.add_config(cfg)


declare_default_keys(extend_cfg)

__all__ = ["extend_cfg"]
