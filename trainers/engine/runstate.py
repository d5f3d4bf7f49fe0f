"""What makes a run resumable, exactly: the epoch commit, the lock, and the rerun rules.

One epoch's state becomes visible at once or not at all
--------------------------------------------------------
Every trainable module still gets its Dassl file ``OUTPUT_DIR/<module>/model.pth.tar-<epoch>``
(``state_dict, epoch, optimizer, scheduler, val_result`` plus ``scaler`` and ``engine``: hook state,
``stop_training``, RNG state). Those files are written first, each through a temporary name. Then
ONE small file, ``OUTPUT_DIR/run_state.json``, is replaced atomically: it names the epoch, the files
of every module, the best epoch, whether training stopped, every metrics record so far, and, at the
end, the final test and the checkpoint it used. That rename is the commit. Until it happens a
resumed run ignores the new files (and rewrites them when it redoes the epoch); after it, the
follow-up work (``model-best.pth.tar`` as a hard link to the committed epoch, Dassl's ``checkpoint``
marker, deleting the files the config does not keep, appending the records to ``metrics.jsonl``) is
repeated by a resumed run, so it does not matter where a kill falls. Why per-module files plus a
manifest rather than one combined file: the Dassl layout stays exactly what CoOp users know (one
``state_dict`` per module, loadable by their tools), no state is stored twice, and the commit
itself is a few kilobytes.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from typing import Any, Dict, List, Optional, Sequence

from utils.errors import CheckpointError, ConfigError, EmoLabError
from utils.fileio import atomic_write

from .checkpoint import BEST, CKPT_RE, MARKER, ckpt_name  # noqa: F401  (the Dassl names, defined once there)

logger = logging.getLogger(__name__)

MANIFEST = "run_state.json"
EVAL_RECORDS = "eval.jsonl"

#: config keys that cannot change a run's results: a rerun may change them and still resume
NON_RESULT_KEYS = (
    "OUTPUT_DIR", "RESUME", "VERBOSE",
    "TRAIN.PRINT_FREQ", "TRAIN.PROGRESS_BAR", "TRAIN.DIST_TIMEOUT",
    "DATALOADER.NUM_WORKERS", "DATALOADER.PIN_MEMORY", "DATALOADER.PREFETCH_FACTOR",
    "DATALOADER.DECODED_CACHE_DIR", "CACHE.DIR", "TRAINER.EMOCOOP.CLUSTER_CACHE_DIR",
)


class OutputError(EmoLabError):
    """OUTPUT_DIR cannot be used (a file, read-only, locked, disk full)."""


# ---------------------------------------------------------------------------------------------- the manifest
def read_manifest(directory: str) -> Optional[Dict[str, Any]]:
    """``directory/run_state.json`` or None (missing or unreadable: the caller scans the files)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        logger.warning(f"ignoring the unreadable {path} ({e}): looking for checkpoints in the files")
        return None
    if not isinstance(m, dict) or not isinstance(m.get("epoch"), int):
        logger.warning(f"ignoring {path}: not a run state")
        return None
    return m


def write_manifest(directory: str, manifest: Dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1)  # key order kept: records are rewritten exactly as first written

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(os.path.join(directory, MANIFEST), write)


def module_dirs(directory: str) -> List[str]:
    """Sub-folders of ``directory`` that hold Dassl checkpoint files."""
    out = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return out
    for n in names:
        d = os.path.join(directory, n)
        if os.path.isdir(d) and any(CKPT_RE.match(f) or f in (BEST, MARKER) for f in os.listdir(d)):
            out.append(n)
    return out


def epochs_on_disk(model_dir: str) -> List[int]:
    try:
        return sorted(int(m.group(1)) for f in os.listdir(model_dir) if (m := CKPT_RE.match(f)))
    except OSError:
        return []


def remove_temporaries(directory: str, modules: Sequence[str]) -> None:
    """Delete half-written ``*.tmp.<pid>`` files a killed process left (only we write those names)."""
    for d in [directory] + [os.path.join(directory, m) for m in modules]:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for f in names:
            if re.search(r"\.tmp\.\d+$", f):
                try:
                    os.remove(os.path.join(d, f))
                except OSError:
                    pass


def link_or_copy(src: str, dst: str) -> None:
    """Make ``dst`` a copy of ``src`` atomically (a hard link when the file system allows)."""
    def write(tmp: str) -> None:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    atomic_write(dst, write)


def write_marker(model_dir: str, fname: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(fname + "\n")

    atomic_write(os.path.join(model_dir, MARKER), write)


def apply_commit(directory: str, manifest: Dict[str, Any]) -> None:
    """The follow-up of a commit (idempotent): best links, ``checkpoint`` markers, obsolete files."""
    epoch = manifest["epoch"]
    for name in manifest.get("modules", []):
        model_dir = os.path.join(directory, name)
        best = manifest.get("best_epoch")
        src = os.path.join(model_dir, ckpt_name(best))
        if best is not None and os.path.isfile(src):
            if not _same_file(src, os.path.join(model_dir, BEST)):
                link_or_copy(src, os.path.join(model_dir, BEST))
        if epoch > 0:
            write_marker(model_dir, ckpt_name(epoch))
        for k in manifest.get("obsolete", []):
            path = os.path.join(model_dir, ckpt_name(k))
            if os.path.isfile(path):
                os.remove(path)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- the lock
_held: Dict[str, int] = {}


def lock_output_dir(directory: str) -> int:
    """Take an exclusive lock on the folder ``directory`` (released when the process ends, even by
    SIGKILL); a second run into the same folder stops with one line."""
    import fcntl

    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputError(f"OUTPUT_DIR {directory} is in use by another run (it holds the folder's lock): "
                          "wait for it to end or choose another --output-dir") from None
    _held[os.path.abspath(directory)] = fd
    return fd


def unlock_output_dir(directory: str) -> None:
    fd = _held.pop(os.path.abspath(directory), None)
    if fd is not None:
        os.close(fd)


def prepare_output_dir(directory: str) -> None:
    """Create ``directory`` or stop with one line (a file, read-only, no space)."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise OutputError(f"OUTPUT_DIR {directory} is a file, not a folder: choose another --output-dir")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create OUTPUT_DIR {directory}: {e.strerror or e}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"OUTPUT_DIR {directory} is not writable: choose another --output-dir")


def write_error(path: str, e: OSError) -> OutputError:
    """A one-line error for a failed write (disk full, read-only, ...)."""
    why = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return OutputError(f"cannot write {path}: {why}; the files written before are intact")


# ---------------------------------------------------------------------------------------------- reruns
def holds_run(directory: str) -> bool:
    """True when ``directory`` holds (part of) a training run: a run state, checkpoints or metrics."""
    if os.path.isfile(os.path.join(directory, MANIFEST)) or module_dirs(directory):
        return True
    path = os.path.join(directory, "metrics.jsonl")
    return os.path.isfile(path) and os.path.getsize(path) > 0


def _flat(d: Any, prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                out.update(_flat(v, f"{prefix}{k}."))
            else:
                out[prefix + str(k)] = v
    return out


def config_changes(saved_path: str, config_yaml: str) -> List[str]:
    """Keys whose values differ between the saved ``config.yaml`` and ``config_yaml`` (the running
    config, as ``cfg.dump()`` writes it; NON_RESULT_KEYS excepted)."""
    import yaml

    try:
        with open(saved_path, encoding="utf-8") as f:
            saved = yaml.safe_load(f) or {}
    except (OSError, ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read the run's config {saved_path}: {str(e).splitlines()[0]}") from None
    now = yaml.safe_load(config_yaml)
    a, b = _flat(saved), _flat(now)
    changed = []
    for k in sorted(set(a) & set(b)):
        if k in NON_RESULT_KEYS:
            continue
        va, vb = a[k], b[k]
        if isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)):
            va, vb = list(va), list(vb)
        if va != vb:
            changed.append(f"{k} {a[k]!r} -> {b[k]!r}")
    return changed


def clear_run(directory: str) -> List[str]:
    """Remove what an earlier training run left in ``directory`` (``--restart``); returns the paths."""
    removed = []
    for name in module_dirs(directory):
        d = os.path.join(directory, name)
        for f in os.listdir(d):
            if CKPT_RE.match(f) or f in (BEST, MARKER):
                os.remove(os.path.join(d, f))
                removed.append(os.path.join(name, f))
        if not os.listdir(d):
            os.rmdir(d)
    for f in (MANIFEST, "metrics.jsonl", "config.yaml"):
        p = os.path.join(directory, f)
        if os.path.isfile(p):
            os.remove(p)
            removed.append(f)
    tb = os.path.join(directory, "tensorboard")
    if os.path.isdir(tb):
        shutil.rmtree(tb)
        removed.append("tensorboard/")
    return removed


def _is_emolab_records(path: str) -> bool:
    """Every line of ``path`` is a metrics record EmoLab writes (a last line cut by a kill excepted)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError):
        return False
    body = [x for x in lines[:-1] if x.strip()]
    for line in body:
        try:
            rec = json.loads(line)
        except ValueError:
            return False
        if not (isinstance(rec, dict) and "split" in rec and isinstance(rec.get("metrics"), dict)):
            return False
    return True


def _is_emolab_config(path: str) -> bool:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(doc, dict) and {"TRAINER", "DATASET", "OUTPUT_DIR"} <= set(doc)


def foreign_files(directory: str) -> List[str]:
    """The files of ``directory`` a run writes to (``config.yaml``, ``metrics.jsonl``, ``eval.jsonl``)
    that exist but were not written by EmoLab: a run neither replaces, appends to nor deletes them."""
    checks = {"config.yaml": _is_emolab_config, "config-eval.yaml": _is_emolab_config,
              "metrics.jsonl": _is_emolab_records, EVAL_RECORDS: _is_emolab_records}
    return [name for name, ours in checks.items()
            if os.path.isfile(os.path.join(directory, name)) and not ours(os.path.join(directory, name))]


def check_rerun(out: str, config_yaml: str, restart: bool, eval_only: bool) -> Optional[str]:
    """Decide what a start into OUTPUT_DIR ``out`` with the config ``config_yaml`` (``cfg.dump()``)
    does. Returns ``"fresh"``, ``"restart"``, ``"resume"`` or ``"finished"`` (nothing to do); raises a
    one-line ConfigError when the config changed, or when the folder holds files of the run's names
    that EmoLab did not write."""
    foreign = foreign_files(out)
    if foreign:
        raise ConfigError(f"OUTPUT_DIR {out} holds {', '.join(foreign)} that no EmoLab run wrote (a run would replace "
                          f"{'it' if len(foreign) == 1 else 'them'}{'; --restart deletes only what EmoLab wrote' if restart else ''}): "
                          "choose another --output-dir")
    if eval_only or not holds_run(out):
        return "fresh"
    if restart:
        return "restart"
    saved = os.path.join(out, "config.yaml")
    if not os.path.isfile(saved):
        raise ConfigError(f"OUTPUT_DIR {out} holds checkpoints or metrics but no config.yaml, so this run cannot be "
                          "checked against it: use a new --output-dir, or --restart to start over there")
    changes = config_changes(saved, config_yaml)
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise ConfigError(f"OUTPUT_DIR {out} holds a run with another config ({shown}): resume it with the same "
                          "config, use a new --output-dir, or add --restart to start over there")
    m = read_manifest(out)
    if m is not None and m.get("finished"):
        return "finished"
    return "resume"


def scan_checkpoints(directory: str, modules: Sequence[str]) -> Optional[int]:
    """The latest epoch for which every module has a readable checkpoint file of that epoch (the
    ``checkpoint`` marker and the run state are not trusted here); None when there is none."""
    from .checkpoint import load_checkpoint

    if not modules:
        return None
    common = None
    for name in modules:
        eps = set(epochs_on_disk(os.path.join(directory, name)))
        common = eps if common is None else common & eps
    for k in sorted(common or (), reverse=True):
        ok = True
        for name in modules:
            try:
                ck = load_checkpoint(os.path.join(directory, name, ckpt_name(k)))
            except CheckpointError:
                ok = False
                break
            if int(ck.get("epoch", -1)) != k:
                ok = False
                break
        if ok:
            return k
    return None


def repair_finished(directory: str) -> bool:
    """A finished run killed after its final commit but before its last records reached
    ``metrics.jsonl``: restore the file from the run state. True when something was restored."""
    m = read_manifest(directory)
    if m is None:
        return False
    path = os.path.join(directory, "metrics.jsonl")
    want = "".join(json.dumps(r) + "\n" for r in m.get("records", []))
    try:
        with open(path, encoding="utf-8") as f:
            if [json.loads(line) for line in f] == m.get("records", []):
                return False
    except (OSError, UnicodeDecodeError, ValueError):
        pass

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(want)

    atomic_write(path, write)
    return True


def eval_epoch(model_dir: str, load_epoch: Optional[int]) -> Optional[int]:
    """The epoch ``--eval-only`` loads: ``--load-epoch``, else the checkpoint the run's final test
    used (from its run state), else None (``model-best.pth.tar``, or the latest)."""
    if load_epoch is not None:
        return load_epoch
    m = read_manifest(model_dir)
    ck = ((m or {}).get("final") or {}).get("checkpoint")
    if ck and CKPT_RE.match(str(ck.get("file", ""))):
        return int(ck["epoch"])
    return None
