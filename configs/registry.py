"""Config extensions: how a trainer, component or dataset adds its node to the default config.

Each module that owns config keys decorates a function ``f(cfg)`` with :func:`register_config`;
``configs.config.get_cfg`` applies every registered extension to the engine defaults before any
yaml is merged (an extension may add keys, never change existing ones).
"""
from __future__ import annotations

from typing import Callable

from utils.registry import Registry

#: Functions ``f(cfg)`` that add a trainer's / component's / dataset's config node.
#: All registered extensions are applied to the defaults before any yaml is merged.
CONFIG_EXTENSIONS = Registry("config extension")


def register_config(fn: Callable) -> Callable:
    """Decorator: register ``fn(cfg)`` that adds keys to the default config."""
    return CONFIG_EXTENSIONS.register(fn)
