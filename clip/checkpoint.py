"""Reading CLIP weight files and loading them into an open_clip ``CLIP``.

Formats are told apart by content, not by extension:

* safetensors (8-byte header length, then a JSON header);
* TorchScript archives as OpenAI distributes them (a zip with ``code/`` and ``constants.pkl``):
  read WITHOUT ``torch.jit.load`` (which compiles the archive's code and runs its
  ``__setstate__`` methods): ``data.pkl`` is unpickled by ``utils.safe_unpickle`` (tensors from
  the raw storage bytes, the scripted module classes as inert stubs, anything else refused) and
  the parameters and buffers each class declares in its ``code/`` entry become the state dict;
* ``torch.save`` pickles (zip or legacy), read with ``weights_only=True``: a plain state dict,
  or ``{"state_dict": ...}``; ``module.`` prefixes (DataParallel / DDP) are removed.

OpenAI state dicts carry ``input_resolution``, ``context_length`` and ``vocab_size`` entries;
they are dropped, and their presence marks the weights as OpenAI's (trained with QuickGELU).
"""
from __future__ import annotations

import logging
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from utils.errors import CheckpointError

logger = logging.getLogger(__name__)

OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
_PATH_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".tar", ".ckpt")


@dataclass
class CheckpointWeights:
    """A state dict read from a file.

    Attributes:
        state_dict: parameter name -> tensor (any float dtype; cast on loading).
        path: the file it came from.
        fmt: ``"safetensors"``, ``"torchscript"`` or ``"pickle"``.
        openai: True for OpenAI's release format (QuickGELU activations).
    """

    state_dict: Dict[str, torch.Tensor]
    path: str
    fmt: str
    openai: bool


def looks_like_path(value: str) -> bool:
    """True if ``value`` is meant as a file (rather than an open_clip pretrained tag)."""
    return "/" in value or "\\" in value or value.lower().endswith(_PATH_SUFFIXES)


def find_checkpoint(value: str, repo_root: Path) -> Optional[str]:
    """The existing file ``value`` names: as given (absolute or relative to cwd), else relative
    to the repository root. None if neither exists."""
    expanded = os.path.expanduser(value)
    if os.path.isfile(expanded):
        return expanded
    if not os.path.isabs(expanded):
        alt = repo_root / expanded
        if alt.is_file():
            return str(alt)
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sniff(path: str) -> str:
    """``"safetensors"``, ``"torchscript"``, ``"zip"`` or ``"pickle"`` from the file's bytes."""
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"CLIP checkpoint is empty: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as exc:
            raise CheckpointError(f"CLIP checkpoint {path} is a damaged zip archive: {_one_line(exc)}") from None
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "zip"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    return "pickle"


_CLASS_RE = re.compile(r"^class (\w+)\(Module\):\n((?:  .*\n)*)", re.M)
_NAMES_RE = re.compile(r"^  __(parameters|buffers)__ = \[(.*?)\]", re.M)


def _declared_tensors(path: str, names: List[str]) -> Dict[str, set]:
    """``{"__torch__.pkg.mod.Class": {parameter and buffer names}}`` from a TorchScript archive's code."""
    out: Dict[str, set] = {}
    with zipfile.ZipFile(path) as zf:
        for member in names:
            marker = "/code/__torch__/"
            if marker not in member or not member.endswith(".py"):
                continue
            module = "__torch__." + member.split(marker, 1)[1][: -len(".py")].replace("/", ".")
            text = zf.read(member).decode("utf-8", errors="replace")
            for m in _CLASS_RE.finditer(text):
                declared = set()
                for kind in _NAMES_RE.finditer(m.group(2)):
                    declared |= set(re.findall(r'"([^"]+)"', kind.group(2)))
                out[f"{module}.{m.group(1)}"] = declared
    return out


def read_torchscript_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The parameters and buffers of the TorchScript module in ``path``, without running its code.

    A tensor attribute counts when its class declares it in ``__parameters__`` / ``__buffers__``
    (all tensor attributes when the class's code entry is missing).
    """
    from utils.safe_unpickle import Stub, allow_patterns, read_torch_zip

    root, names = read_torch_zip(path, allow_patterns(["__torch__.*"]), what="CLIP checkpoint")
    if not isinstance(root, Stub):
        raise CheckpointError(f"CLIP checkpoint {path} is a TorchScript archive without a module")
    declared = _declared_tensors(path, names)
    state: Dict[str, torch.Tensor] = {}
    todo = [("", root)]
    while todo:
        prefix, obj = todo.pop()
        attrs = obj.state if isinstance(obj.state, dict) else {}
        wanted = declared.get(obj.qualname)
        for key, value in attrs.items():
            if isinstance(value, torch.Tensor) and (wanted is None or key in wanted):
                state[prefix + key] = value
            elif isinstance(value, Stub):
                todo.append((f"{prefix}{key}.", value))
    return state


def _read_raw(path: str, kind: str) -> object:
    if kind == "torchscript":
        return read_torchscript_state_dict(path)  # one-line "cannot read CLIP checkpoint <path>: ..." errors
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise CheckpointError(f"could not read CLIP checkpoint {path}: {_one_line(exc)}") from None


def read_checkpoint(path: str) -> CheckpointWeights:
    """Read the CLIP state dict stored in ``path`` (format detected from its content)."""
    kind = _sniff(path)
    obj = _read_raw(path, kind)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"CLIP checkpoint {path} holds no state dict (found {type(obj).__name__})")
    state: Dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"CLIP checkpoint {path} is not a state dict: entry {key!r} is {type(value).__name__}, not a tensor"
            )
        state[key[len("module."):] if key.startswith("module.") else key] = value
    openai = any(k in state for k in OPENAI_META_KEYS)
    for key in OPENAI_META_KEYS:
        state.pop(key, None)
    fmt = "torchscript" if kind == "torchscript" else ("safetensors" if kind == "safetensors" else "pickle")
    logger.debug("read %d tensors from %s (%s%s)", len(state), path, fmt, ", OpenAI" if openai else "")
    return CheckpointWeights(state, path, fmt, openai)


def _first(keys: List[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown} ... ({len(keys)} in all)" if len(keys) > n else shown


def load_weights(model: nn.Module, weights: CheckpointWeights, arch: str) -> None:
    """Copy ``weights`` into ``model`` (cast to the model's dtype); a :class:`CheckpointError`
    naming the file and the first missing / unexpected / mis-shaped keys on any mismatch."""
    own = model.state_dict()
    state = dict(weights.state_dict)
    for key in [k for k in state if k.endswith("attn_mask") and k not in own]:
        state.pop(key)  # a causal mask stored by older exporters; open_clip rebuilds it
    if "logit_scale" in state and "logit_scale" in own and state["logit_scale"].shape != own["logit_scale"].shape:
        if state["logit_scale"].numel() == own["logit_scale"].numel():
            state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_first(unexpected)}")
        raise CheckpointError(f"CLIP checkpoint {weights.path} does not match architecture {arch}: {'; '.join(parts)}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise CheckpointError(
                f"CLIP checkpoint {weights.path} does not match architecture {arch}: {key} has shape "
                f"{tuple(value.shape)} in the file but {tuple(own[key].shape)} in the model"
            )
    model.load_state_dict(state, strict=False)  # keys checked above (BatchNorm counters may be absent)
    logger.info("loaded CLIP weights from %s (%s)", weights.path, weights.fmt)
