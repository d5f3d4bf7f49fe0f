"""Methods kept outside the repository: ``train.py --import my_project.methods`` or ``$EMOLAB_IMPORT``.

A user module imports what it needs from EmoLab and registers its trainers
(``@TRAINER_REGISTRY.register()``), config nodes (``@register_config``), datasets
(``@DATASET_REGISTRY.register()``) and evaluators (``@EVALUATOR_REGISTRY.register()``), exactly as the
project's own modules do; importing it is all it takes. A config node may only be added, never
redefined (:func:`configs.config.get_cfg` refuses an extension that changes an existing key).
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any, List

from utils.errors import ConfigError


def import_extensions(modules: Any = (), env_var: str = "EMOLAB_IMPORT") -> List[str]:
    """Import user modules that register trainers, components, datasets or evaluators.

    ``modules``: dotted module names (``--import my_project.methods``; comma-separated lists are
    split) plus those in ``$EMOLAB_IMPORT``. The current directory is put on ``sys.path`` first, as
    ``python -m`` does. A module that fails to import raises a one-line :class:`ConfigError`
    naming it. Returns the names imported.
    """
    names: List[str] = []
    for item in list(modules or []) + [os.environ.get(env_var, "")]:
        names += [n.strip() for n in str(item).split(",") if n.strip()]
    if not names:
        return []
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in dict.fromkeys(names):
        try:
            importlib.import_module(name)
        except ConfigError as e:
            raise ConfigError(f"extension module {name!r}: {e}") from None
        except Exception as e:  # noqa: BLE001 - any failure of a user module is reported in one line
            where = ""
            if isinstance(e, SyntaxError) and e.filename:
                where = f" ({e.filename}, line {e.lineno})"
            else:
                tb = e.__traceback__
                while tb is not None and tb.tb_next is not None:
                    tb = tb.tb_next
                if tb is not None and not isinstance(e, ModuleNotFoundError):
                    where = f" ({tb.tb_frame.f_code.co_filename}, line {tb.tb_lineno})"
            first = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError(f"cannot import extension module {name!r}: {type(e).__name__}: {first}{where}") from None
    return list(dict.fromkeys(names))
