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

Neither can be made to allocate much more memory than the file holds (:func:`read_budget`: a small
multiple of the file's size): a zip member's declared size is checked against what it stores before
it is read, a tensor's storage against its member, a tensor larger than its storage (a stride-0
"giant") is counted against the budget, and the constructors a plain pickle may call (``bytes(N)``,
``bytearray(N)``, ``list(range(N))``, numpy arrays of a given shape) are charged before they run; a
pickle whose opcodes alone would build more objects than the budget allows is refused unread.
"""
from __future__ import annotations

import collections
import fnmatch
import functools
import importlib
import io
import math
import os
import pickle
import warnings
import zipfile
from typing import Any, Callable, Dict, Iterable, Iterator, List, Tuple

import torch

from .errors import CheckpointError

STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}
#: reading a file may allocate at most GROWTH times its size, plus SLACK bytes (see :func:`read_budget`)
GROWTH = 16
SLACK = 16 << 20


def read_budget(file_size: int) -> int:
    """How many bytes reading a file of ``file_size`` bytes may allocate (a small multiple of its size)."""
    return GROWTH * int(file_size) + SLACK


class Budget:
    """Bytes still allowed while reading one file; :meth:`charge` raises ``error`` (default
    :class:`CheckpointError`) beyond it."""

    def __init__(self, file_size: int, error: type = CheckpointError) -> None:
        self.file_size, self.limit, self.used, self.error = int(file_size), read_budget(file_size), 0, error

    def charge(self, nbytes: int, what: str) -> None:
        self.used += max(int(nbytes), 0)
        if self.used > self.limit:
            raise self.error(
                f"{what} would need {_human(self.used)} of memory, more than a {_human(self.file_size)} file may "
                f"ask for ({_human(self.limit)}): a damaged or crafted file")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


#: bytes a pickle opcode may make the unpickler allocate beyond its own bytes (CPython, 64 bit; rounded up)
_OPCODE_COST = {
    "EMPTY_SET": 232, "FROZENSET": 232, "EMPTY_DICT": 80, "DICT": 80, "EMPTY_LIST": 72, "LIST": 72,
    "TUPLE1": 64, "TUPLE2": 72, "TUPLE3": 80, "TUPLE": 64, "REDUCE": 64, "NEWOBJ": 64, "NEWOBJ_EX": 64,
    "OBJ": 64, "INST": 64, "BUILD": 64,
}


def check_pickle_cost(data: bytes, budget: Budget, what: str = "its pickle") -> None:
    """Charge ``budget`` with what unpickling ``data`` could allocate, estimated from its opcodes before any
    runs: a pickle of a few bytes per empty set, dict or tuple cannot make the reader build gigabytes."""
    import pickletools

    cost = 0
    try:
        for op, arg, _pos in pickletools.genops(data):
            cost += _OPCODE_COST.get(op.name, 16)
            if isinstance(arg, (bytes, str, bytearray)):
                cost += len(arg)
            if op.name == "STOP":
                break
    except (ValueError, EOFError, NotImplementedError) as exc:
        raise budget.error(f"{what} is damaged: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    budget.charge(cost, what)


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


def _rebuild_tensor(budget: Budget, storage: torch.Tensor, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...],
                    *_: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise CheckpointError("a tensor without storage")
    size, stride, offset = tuple(int(v) for v in size), tuple(int(v) for v in stride), int(offset)
    if len(size) != len(stride) or any(v < 0 for v in size + stride) or offset < 0:
        raise CheckpointError(f"a tensor of impossible shape {list(size)} (strides {list(stride)})")
    numel = math.prod(size)
    if numel:
        last = offset + sum((n - 1) * st for n, st in zip(size, stride))
        if last >= storage.numel():
            raise CheckpointError(
                f"a tensor of shape {list(size)} reaches element {last} of a storage holding {storage.numel()}")
        if numel > storage.numel():  # overlapping views (stride 0): free to load, huge once copied
            budget.charge(numel * storage.element_size(), f"a tensor of shape {list(size)} over {storage.numel()} stored values")
    return torch.as_strided(storage, size, stride, offset)


def _rebuild_tensor_v3(budget: Budget, storage: torch.Tensor, offset: int, size, stride, requires_grad, hooks, dtype,
                       *_: Any):
    if isinstance(storage, torch.Tensor) and storage.dtype != dtype:
        if storage.numel() * storage.element_size() % torch.empty(0, dtype=dtype).element_size():
            raise CheckpointError(f"tensor data does not hold whole {dtype} values")
        storage = storage.view(dtype)
    return _rebuild_tensor(budget, storage, offset, size, stride)


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
                 allowed: Callable[[str, str], bool], path: str, budget: Budget) -> None:
        super().__init__(io.BytesIO(data))
        self._load_storage, self._allowed, self._path, self._budget = load_storage, allowed, path, budget
        self._stubs: Dict[Tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # protocol-2 names
        if (module, name) in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[(module, name)]
        if (module, name) in _TORCH_FUNCS:
            fn = _TORCH_FUNCS[(module, name)]
            return functools.partial(fn, self._budget) if fn in (_rebuild_tensor, _rebuild_tensor_v3) else fn
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


def check_zip_sizes(zf: zipfile.ZipFile, file_size: int) -> None:
    """Refuse an archive whose members declare more bytes than the file can hold, before any is read.

    torch writes its members uncompressed; a stored member must declare exactly the bytes it stores,
    a deflated one at most :data:`GROWTH` times them, and all together at most :func:`read_budget`.
    """
    total = 0
    for info in zf.infolist():
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise CheckpointError(f"member {info.filename} declares {info.file_size} bytes but stores {info.compress_size}")
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if info.file_size > GROWTH * info.compress_size + (1 << 20):
                raise CheckpointError(
                    f"member {info.filename} declares {_human(info.file_size)} from {_human(info.compress_size)} of "
                    f"compressed data (a decompression bomb)")
        else:
            raise CheckpointError(f"member {info.filename} uses compression method {info.compress_type} (torch writes stored members)")
        total += info.file_size
    if total > read_budget(file_size):
        raise CheckpointError(f"its members declare {_human(total)}, more than a {_human(file_size)} file may hold")


def _read_torch_zip(path: str, allowed: Callable[[str, str], bool]) -> Tuple[Any, List[str]]:
    try:
        zf = zipfile.ZipFile(path)
        file_size = os.path.getsize(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(str(exc).splitlines()[0]) from None
    with zf:
        names = zf.namelist()
        prefix = _record_prefix(names, path)
        check_zip_sizes(zf, file_size)
        if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() != b"little":
            raise CheckpointError("big-endian tensor data is not supported")
        budget = Budget(file_size)
        cache: Dict[str, torch.Tensor] = {}

        def load_storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
            if key not in cache:
                member = f"{prefix}data/{key}"
                try:
                    declared = zf.getinfo(member).file_size
                except KeyError:
                    raise CheckpointError(f"tensor data {key} is missing") from None
                need = numel * torch.empty(0, dtype=dtype).element_size()
                if numel < 0 or declared < need:
                    raise CheckpointError(f"tensor data {key} holds {declared} bytes, the pickle declares {need}")
                raw = bytearray(zf.read(member))
                cache[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            return cache[key]

        try:
            pkl = zf.read(f"{prefix}data.pkl")
            check_pickle_cost(pkl, budget)
            obj = _Unpickler(pkl, load_storage, allowed, path, budget).load()
        except CheckpointError:
            raise
        except MemoryError:
            raise CheckpointError("reading it ran out of memory (a damaged or crafted file)") from None
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


def walk(obj: Any) -> Iterator[Any]:
    """Every object reachable from ``obj`` through dicts (values), lists, tuples, sets and :class:`Stub`
    arguments and state, each once (shared and cyclic references visited once)."""
    seen: set = set()
    todo = [obj]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        if isinstance(cur, Stub):
            todo += [cur.args, cur.kwargs, cur.state]
        elif isinstance(cur, dict):
            todo += list(cur.values())
        elif isinstance(cur, (list, tuple, set, frozenset)):
            todo += list(cur)


def stub_names(obj: Any) -> List[str]:
    """Qualified names of the stubs inside ``obj`` (sorted)."""
    return sorted({cur.qualname for cur in walk(obj) if isinstance(cur, Stub)})


# ------------------------------------------------------------------ plain pickles
_PLAIN_BUILTINS = frozenset({
    "list", "dict", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes",
    "bytearray", "range", "slice",
})
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric", "numpy")
_NUMPY_NAMES = frozenset({"_reconstruct", "scalar", "ndarray", "dtype", "_frombuffer"})


def _length(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 0


def _charged(budget: Budget, ctor: Callable, per_item: int) -> Callable:
    """``ctor`` that first charges ``budget`` for what it builds: ``bytes(N)`` / ``bytearray(N)`` N bytes,
    ``list(x)`` / ``tuple(x)`` / ``set(x)`` ``per_item`` bytes per element of ``x`` (a ``range`` included)."""
    name = getattr(ctor, "__name__", str(ctor))

    def build(*args: Any, **kwargs: Any) -> Any:
        if args:
            first = args[0]
            n = int(first) if isinstance(first, int) and ctor in (bytes, bytearray) else _length(first)
            budget.charge(n * per_item, f"{name}() of {n} items")
        return ctor(*args, **kwargs)

    return build


def _charged_array(budget: Budget, ctor: Callable, shape_at: int, dtype_at: int) -> Callable:
    """A numpy constructor (``_reconstruct``, ``ndarray``) charged for the array its shape and dtype ask for."""
    import numpy as np

    def build(*args: Any, **kwargs: Any) -> Any:
        args = tuple(getattr(a, "_real_ndarray", a) for a in args)  # _reconstruct(ndarray, ...) names the class
        shape = args[shape_at] if len(args) > shape_at else kwargs.get("shape", ())
        dims = [int(shape)] if isinstance(shape, int) else [int(v) for v in shape]
        try:
            itemsize = np.dtype(args[dtype_at] if len(args) > dtype_at else kwargs.get("dtype", float)).itemsize
        except TypeError:
            itemsize = 8
        if any(d < 0 for d in dims):
            raise budget.error(f"an array of negative shape {dims}")
        budget.charge(math.prod(dims) * max(itemsize, 1), f"an array of shape {dims}")
        return ctor(*args, **kwargs)

    if ctor is np.ndarray:
        build._real_ndarray = np.ndarray  # type: ignore[attr-defined]
    return build


_PER_ITEM = {"list": 8, "tuple": 8, "set": 64, "frozenset": 64, "dict": 64, "bytes": 1, "bytearray": 1}


class SafeUnpickler(pickle.Unpickler):
    """For plain pickles (conversation features, gensim word vectors): builds only containers,
    scalars and numpy arrays; any other global is an ``UnpicklingError`` naming it.

    The whole pickle is read first: its opcodes are priced (:func:`check_pickle_cost`) and the
    constructors it calls are charged (:func:`_charged`) against :func:`read_budget` of its size, so
    ``bytes(N)``, ``list(range(N))`` or a file of empty sets ends in an ``UnpicklingError``, not in
    gigabytes allocated or a ``MemoryError``.
    """

    def __init__(self, file: Any, *args: Any, **kwargs: Any) -> None:
        data = file.read()
        self.budget = Budget(len(data), error=pickle.UnpicklingError)
        check_pickle_cost(data, self.budget, "the pickle")
        super().__init__(io.BytesIO(data), *args, **kwargs)

    def load(self) -> Any:
        try:
            return super().load()
        except MemoryError:
            raise pickle.UnpicklingError("unpickling it ran out of memory (a damaged or crafted file)") from None
        except RecursionError:
            raise pickle.UnpicklingError("it nests containers too deeply") from None

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _PLAIN_BUILTINS:
            ctor = getattr(__import__("builtins"), name)
            return _charged(self.budget, ctor, _PER_ITEM[name]) if name in _PER_ITEM else ctor
        if module == "collections" and name in ("OrderedDict", "defaultdict"):
            return _charged(self.budget, getattr(__import__("collections"), name), 64)
        if module == "_codecs" and name == "encode":  # bytes written by Python 2 / protocol 2
            import _codecs

            return _codecs.encode
        if module.startswith("numpy.dtypes") and name.endswith("DType"):
            return getattr(importlib.import_module("numpy.dtypes"), name)
        if module in _NUMPY_MODULES and name in _NUMPY_NAMES:
            with warnings.catch_warnings():  # numpy 2 warns about numpy.core.*
                warnings.simplefilter("ignore")
                mod = importlib.import_module(module)
            obj = getattr(mod, name)
            if name == "_reconstruct":
                return _charged_array(self.budget, obj, 1, 2)
            if name == "ndarray":
                return _charged_array(self.budget, obj, 0, 1)
            return obj
        raise pickle.UnpicklingError(f"forbidden global {module}.{name} (only containers and numpy arrays are allowed)")


# ------------------------------------------------------------------ torch.load's own reader
def check_torch_file(path: str) -> Budget:
    """Checks made before ``torch.load`` reads ``path``: a zip archive's declared member sizes
    (:func:`check_zip_sizes`) and its pickle's opcodes (:func:`check_pickle_cost`). Returns the
    file's :class:`Budget` for :func:`check_tensor_sizes`; raises :class:`CheckpointError`."""
    size = os.path.getsize(path)
    budget = Budget(size)
    if not zipfile.is_zipfile(path):
        return budget  # the legacy format: torch reads each storage's size from the file itself
    try:
        with zipfile.ZipFile(path) as zf:
            check_zip_sizes(zf, size)
            pkls = [n for n in zf.namelist() if n.endswith("data.pkl")]
            if pkls:
                check_pickle_cost(zf.read(_record_prefix(pkls, path) + "data.pkl"), budget)
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(str(exc).splitlines()[0]) from None
    return budget


def check_tensor_sizes(obj: Any, budget: Budget) -> None:
    """Charge ``budget`` for every tensor in ``obj`` (containers walked) larger than its storage: a
    stride-0 view of a few stored values costs nothing to load, its full size once copied."""
    for cur in walk(obj):
        if isinstance(cur, torch.Tensor) and cur.layout == torch.strided and cur.device.type != "meta":
            logical = cur.numel() * cur.element_size()
            if logical > cur.untyped_storage().nbytes():
                budget.charge(logical, f"a tensor of shape {list(cur.shape)} over {cur.untyped_storage().nbytes()} stored bytes")
