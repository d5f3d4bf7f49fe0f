"""Build, merge and check configs.

Merge order (Dassl / CoOp): engine defaults -> every registered config extension ->
dataset yaml -> trainer yaml -> CLI flags -> trailing ``KEY VALUE`` opts -> freeze.
Unlike plain yacs, every problem becomes a one-line :class:`ConfigError` that names the
key, the offending value and its source, and suggests the closest valid key.
"""
from __future__ import annotations

import ast
import os
from typing import Any, List, Optional, Sequence

import yaml
from yacs.config import CfgNode as CN

from .defaults import get_cfg_default
from utils.errors import ConfigError
from utils.fileio import atomic_write
from utils.registry import closest
from .registry import CONFIG_EXTENSIONS


def get_cfg(with_extensions: bool = True) -> CN:
    """Defaults plus all registered config extensions.

    Extensions register when ``trainers`` and ``datasets`` are imported; ``configs`` sits below
    them and imports neither, so use :func:`trainers.get_cfg`, which imports them first.
    """
    cfg = get_cfg_default()
    if with_extensions:
        if not len(CONFIG_EXTENSIONS):
            raise ConfigError("no config extensions registered: import trainers first (use trainers.get_cfg)")
        # the project's own extensions first, then out-of-tree ones (``--import``), each checked
        for _, fn in sorted(CONFIG_EXTENSIONS.items(), key=lambda kv: (is_external(kv[1]), kv[0])):
            before = dict(flatten(cfg))
            fn(cfg)
            _check_no_redefinition(fn, before, cfg)
    return cfg


def is_external(obj: Any) -> bool:
    """True for an object defined outside the project's packages (an ``--import`` extension)."""
    module = getattr(obj, "__module__", "") or ""
    return module.split(".")[0] not in ("configs", "datasets", "trainers", "clip", "tools")


def _check_no_redefinition(fn: Any, before: dict, cfg: CN) -> None:
    """An extension may add keys, never replace or change existing ones (one-line ConfigError)."""
    after = dict(flatten(cfg))
    changed = [k for k, v in before.items() if k not in after or after[k] != v or type(after[k]) is not type(v)]
    if changed:
        node = changed[0].rsplit(".", 1)[0] if "." in changed[0] else changed[0]
        where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__name__', fn)}"
        raise ConfigError(
            f"config extension {where} redefines the existing config node {node} "
            f"({len(changed)} existing key(s) changed, e.g. {changed[0]}): add a new node instead"
        )


def config_diff(cfg: CN, reference: CN) -> List[tuple]:
    """``[(full_key, value)]`` of the leaves of ``cfg`` that differ from (or are absent in) ``reference``."""
    ref = dict(flatten(reference))
    out = []
    for k, v in flatten(cfg):
        r = ref.get(k, object())
        same = r == v or (isinstance(r, (list, tuple)) and isinstance(v, (list, tuple)) and list(r) == list(v))
        if not same:
            out.append((k, v))
    return out


def _key_error(full_key: str, node: CN, key: str, source: str) -> ConfigError:
    prefix = full_key.rsplit(".", 1)[0] + "." if "." in full_key else ""
    hint = closest(key, list(node.keys()))
    msg = f"unknown config key {full_key!r} in {source}"
    if hint:
        msg += f" (did you mean {prefix + hint!r}?)"
    return ConfigError(msg)


def _type_name(v: Any) -> str:
    return type(v).__name__


def coerce(value: Any, original: Any, full_key: str, source: str) -> Any:
    """Convert ``value`` to the type of ``original`` where that is lossless, else raise."""
    if original is None or value is None:
        return value
    if isinstance(original, CN):
        raise ConfigError(f"config key {full_key!r} in {source} is a group of keys, got a {_type_name(value)} value")
    if isinstance(original, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(original, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(original, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(original, str):
        if isinstance(value, str):
            return value
        if isinstance(value, bool) and full_key.endswith("PRETRAINED"):
            return ""  # Dassl's boolean PRETRAINED: weights come from the backbone's own default
    elif isinstance(original, (tuple, list)):
        if isinstance(value, (tuple, list)):
            return type(original)(value)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return type(original)([value])
    elif isinstance(original, dict):
        if isinstance(value, dict):
            return value
    raise ConfigError(
        f"config key {full_key!r} in {source} expects {_type_name(original)}, "
        f"got {_type_name(value)} {value!r}"
    )


def _merge_dict(cfg: CN, data: dict, source: str, prefix: str = "") -> None:
    for key, value in data.items():
        full_key = prefix + str(key)
        if key not in cfg:
            if cfg.is_new_allowed():
                cfg[key] = CN(value) if isinstance(value, dict) else value
                continue
            raise _key_error(full_key, cfg, str(key), source)
        original = cfg[key]
        if isinstance(original, CN):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"config key {full_key!r} in {source} is a group of keys, got {_type_name(value)} {value!r}"
                )
            _merge_dict(original, value, source, full_key + ".")
        else:
            if isinstance(value, str) and not isinstance(original, str):
                value = decode_value(value)  # yacs semantics: "(224, 224)" in yaml is a tuple
            cfg[key] = coerce(value, original, full_key, source)


def merge_from_file(cfg: CN, path: str) -> None:
    """Merge a yaml file into ``cfg`` with key and type checks."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {_type_name(data)}")
    data.pop("_BASE_", None)
    _merge_dict(cfg, data, path)


def decode_value(text: Any) -> Any:
    """Parse a command-line value like yacs does: Python literals, else the plain string."""
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text


def merge_from_list(cfg: CN, opts: Sequence[str], source: str = "command-line opts") -> None:
    """Merge ``KEY VALUE`` pairs (yacs ``merge_from_list`` semantics) with checks."""
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"{source} must be KEY VALUE pairs; {opts[-1]!r} has no value")
    for full_key, text in zip(opts[0::2], opts[1::2]):
        node = cfg
        parts = full_key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, CN) or part not in node:
                if isinstance(node, CN) and node.is_new_allowed() and i == len(parts) - 1:
                    node[part] = decode_value(text)
                    break
                parent = node if isinstance(node, CN) else CN()
                raise _key_error(".".join(parts[: i + 1]), parent, part, source)
            if i == len(parts) - 1:
                original = node[part]
                value = decode_value(text)
                if isinstance(original, str) and not isinstance(value, str):
                    value = str(text)  # a string key keeps the literal text ("1e-3", "True")
                node[part] = coerce(value, original, full_key, source)
            else:
                node = node[part]


def save_cfg(cfg: CN, path: str) -> None:
    """Write the merged config as yaml (atomically)."""
    text = cfg.dump()

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def load_saved_cfg(path: str) -> CN:
    """Read an ``OUTPUT_DIR/config.yaml`` back (for tools)."""
    cfg = get_cfg()
    merge_from_file(cfg, path)
    return cfg


def flatten(cfg: CN, prefix: str = "") -> List[tuple]:
    """[(full_key, value)] for every leaf key."""
    out: List[tuple] = []
    for k, v in cfg.items():
        if isinstance(v, CN):
            out += flatten(v, prefix + k + ".")
        else:
            out.append((prefix + k, v))
    return out


def find_key(cfg: CN, full_key: str) -> Optional[Any]:
    node: Any = cfg
    for part in full_key.split("."):
        if not isinstance(node, CN) or part not in node:
            return None
        node = node[part]
    return node
