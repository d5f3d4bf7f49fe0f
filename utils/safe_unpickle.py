"""Read tensors out of ``torch.save`` / TorchScript zip archives without running pickled code.

Two kinds of files the framework must read hold more than tensors:

* OpenAI's CLIP releases (``ViT-B-16.pt``) are TorchScript archives: ``torch.jit.load`` compiles
  the archive's code and runs the ``__setstate__`` methods it defines, so a crafted file can run
  (TorchScript) code when it is loaded;
* Dassl / CoOp checkpoints pickle the LR scheduler object (its ``successor`` scheduler and the
  optimizer it points to), which ``torch.load(weights_only=True)`` refuses and
  ``weights_only=False`` would reconstruct by importing and calling arbitrary classes.

:func:`read_torch_zip` unpickles the archive's ``data.pkl`` with a restricted unpickler: tensors
are rebuilt from the archive's raw storage bytes (no pickled code), plain containers and
scalars are allowed, and a global on the caller's allow-list becomes an inert :class:`Stub`
that records its name and state and runs nothing. Any other global (``os.system``,
``builtins.eval``, an unknown class) stops reading with a :class:`CheckpointError` naming it.

:class:`SafeUnpickler` does the same for plain pickles (VEGA's conversation features, gensim
``.kv`` files): containers, scalars and numpy arrays only.
"""
from __future__ import annotations

import collections
import fnmatch
import importlib
import io
import pickle
import warnings
import zipfile
from typing import Any, Callable, Dict, Iterable, List, Tuple

import torch

from .errors import CheckpointError

STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}
def _plain_dict(*_: Any) -> dict:
    return {}  # a defaultdict comes back as a plain dict (its factory is not kept)


_SAFE_BUILTINS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): _plain_dict,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}


class Stub:
    """An allow-listed object read from a pickle: its qualified name, constructor args and state.

    Nothing of the real class runs; callers read ``state`` (usually the object's ``__dict__``).
    """

    qualname = "?"
    args: tuple = ()
    kwargs: dict = {}
    state: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> "Stub":  # NEWOBJ calls __new__ only
        obj = object.__new__(cls)
        obj.args, obj.kwargs = args, kwargs
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls the class
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stub {self.qualname}>"


def _stub_class(module: str, name: str) -> type:
    return type(name, (Stub,), {"qualname": f"{module}.{name}"})


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...], *_: Any) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


def _rebuild_tensor_v3(storage: torch.Tensor, offset: int, size, stride, requires_grad, hooks, dtype, *_: Any):
    return _rebuild_tensor(storage.view(dtype) if storage.dtype != dtype else storage, offset, size, stride)


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


def _restore_type_tag(value: Any, *_: Any) -> Any:
    return value


def _identity_list(value: Any) -> Any:
    return list(value)


_TORCH_FUNCS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
    ("torch.jit._pickle", "build_intlist"): _identity_list,
    ("torch.jit._pickle", "build_doublelist"): _identity_list,
    ("torch.jit._pickle", "build_boollist"): _identity_list,
    ("torch.jit._pickle", "build_tensorlist"): _identity_list,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, load_storage: Callable[[str, torch.dtype, int], torch.Tensor],
                 allowed: Callable[[str, str], bool], path: str) -> None:
        super().__init__(io.BytesIO(data))
        self._load_storage, self._allowed, self._path = load_storage, allowed, path
        self._stubs: Dict[Tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # protocol-2 names
        if (module, name) in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[(module, name)]
        if (module, name) in _TORCH_FUNCS:
            return _TORCH_FUNCS[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if self._allowed(module, name):
            return self._stubs.setdefault((module, name), _stub_class(module, name))
        raise CheckpointError(
            f"it holds {module}.{name}, which is not on the allow-list of what may be read (unpickling it could run code)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"unknown persistent id {pid!r:.60}")
        _, storage_type, key, _location, numel = pid[:5]
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else torch.uint8
        return self._load_storage(str(key), dtype, int(numel))


def _record_prefix(names: List[str], path: str) -> str:
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1] or \
           [n for n in names if n.endswith("data.pkl")]
    if not pkls:
        raise CheckpointError("a zip archive without data.pkl: not a torch file")
    return pkls[0][: -len("data.pkl")]


def read_torch_zip(path: str, allowed: Callable[[str, str], bool] = lambda m, n: False,
                   what: str = "file") -> Tuple[Any, List[str]]:
    """The object pickled in the zip archive ``path`` (``torch.save`` >= 1.6 or ``torch.jit.save``),
    read without running pickled code, and the archive's member names.

    ``allowed(module, name)`` says which globals become :class:`Stub` objects; tensors come back
    as CPU tensors in their stored dtype. Errors: one-line ``cannot read <what> <path>: ...``.
    """
    try:
        return _read_torch_zip(path, allowed)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot read {what} {path}: {exc}") from None


def _read_torch_zip(path: str, allowed: Callable[[str, str], bool]) -> Tuple[Any, List[str]]:
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(str(exc).splitlines()[0]) from None
    with zf:
        names = zf.namelist()
        prefix = _record_prefix(names, path)
        if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() != b"little":
            raise CheckpointError("big-endian tensor data is not supported")
        cache: Dict[str, torch.Tensor] = {}

        def load_storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
            if key not in cache:
                try:
                    raw = bytearray(zf.read(f"{prefix}data/{key}"))
                except KeyError:
                    raise CheckpointError(f"tensor data {key} is missing") from None
                cache[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            return cache[key]

        try:
            obj = _Unpickler(zf.read(f"{prefix}data.pkl"), load_storage, allowed, path).load()
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged pickle is a bad file for the user
            raise CheckpointError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return obj, names


def allow_patterns(patterns: Iterable[str]) -> Callable[[str, str], bool]:
    """An ``allowed(module, name)`` test from glob patterns over ``module.name``."""
    pats = list(patterns)
    return lambda module, name: any(fnmatch.fnmatchcase(f"{module}.{name}", p) for p in pats)


def strip_stubs(obj: Any) -> Any:
    """``obj`` with every :class:`Stub` replaced by None (dicts, lists and tuples walked)."""
    if isinstance(obj, Stub):
        return None
    if isinstance(obj, dict):
        return type(obj)((k, strip_stubs(v)) for k, v in obj.items()) if isinstance(obj, collections.OrderedDict) \
            else {k: strip_stubs(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(strip_stubs(v) for v in obj)
    return obj


def stub_names(obj: Any) -> List[str]:
    """Qualified names of the stubs inside ``obj`` (sorted; shared and cyclic references visited once)."""
    found: set = set()
    seen: set = set()
    todo = [obj]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, Stub):
            found.add(cur.qualname)
            todo += [cur.args, cur.kwargs, cur.state]
        elif isinstance(cur, dict):
            todo += list(cur.values())
        elif isinstance(cur, (list, tuple, set, frozenset)):
            todo += list(cur)
    return sorted(found)


# ------------------------------------------------------------------ plain pickles
_PLAIN_BUILTINS = frozenset({
    "list", "dict", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes",
    "bytearray", "range", "slice",
})
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric", "numpy")
_NUMPY_NAMES = frozenset({"_reconstruct", "scalar", "ndarray", "dtype", "_frombuffer"})


class SafeUnpickler(pickle.Unpickler):
    """For plain pickles (conversation features, gensim word vectors): builds only containers,
    scalars and numpy arrays; any other global is an ``UnpicklingError`` naming it."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _PLAIN_BUILTINS:
            return getattr(__import__("builtins"), name)
        if module == "collections" and name in ("OrderedDict", "defaultdict"):
            return getattr(__import__("collections"), name)
        if module == "_codecs" and name == "encode":  # bytes written by Python 2 / protocol 2
            import _codecs

            return _codecs.encode
        if module.startswith("numpy.dtypes") and name.endswith("DType"):
            return getattr(importlib.import_module("numpy.dtypes"), name)
        if module in _NUMPY_MODULES and name in _NUMPY_NAMES:
            with warnings.catch_warnings():  # numpy 2 warns about numpy.core.*
                warnings.simplefilter("ignore")
                mod = importlib.import_module(module)
            return getattr(mod, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name} (only containers and numpy arrays are allowed)")
