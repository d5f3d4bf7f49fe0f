"""Persistence of :class:`~trainers.engine.trainer.TrainerBase`: :class:`PersistenceMixin`.

Everything the trainer writes to and reads back from OUTPUT_DIR: saving an epoch (each module's Dassl file, then the ``run_state.json`` commit), the final commit,
loading weights for evaluation, and resuming from the last committed epoch (or, without a run state,
from the latest epoch whose files are all readable). See README, "Resuming, reruns and kills".
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from utils.errors import CheckpointError
from utils.fileio import atomic_torch_save
from utils.killpoints import killpoint

from . import runstate
from .checkpoint import checkpoint_path, ckpt_name, load_checkpoint
from .logger import checkpoint_summary

logger = logging.getLogger("trainers.engine.trainer")  # one logger name for the whole engine loop


def hook_names(hooks) -> List[str]:
    """A stable name per hook: its class name, ``#2``, ``#3``... for later hooks of the same class."""
    seen: Dict[str, int] = {}
    out = []
    for h in hooks:
        n = type(h).__name__
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def match_hook_states(hooks, states: List[Dict[str, Any]], names: Optional[List[str]]) -> List[Dict[str, Any]]:
    """The saved state of each hook: by name when the checkpoint names them; for a checkpoint
    without names (written before hooks were ordered by priority) each hook takes the first unused
    state whose keys are the keys of its own state (or one of its ``LEGACY_STATE_KEYS``), in order."""
    if names is not None:
        by_name = dict(zip(names, states))
        return [by_name.get(n, {}) for n in hook_names(hooks)]
    free = list(states)
    out = []
    for h in hooks:
        want = [frozenset(h.state_dict())] + list(getattr(h, "LEGACY_STATE_KEYS", ()))
        i = next((i for i, s in enumerate(free) if isinstance(s, dict) and frozenset(s) in want), None)
        out.append(free.pop(i) if i is not None else {})
    return out


class PersistenceMixin:
    """What the trainer writes to OUTPUT_DIR and reads back: epoch checkpoints and the run-state
    commit, the final commit, loading weights, and resuming (see :mod:`trainers.engine.runstate`)."""

    # ------------------------------------------------------------------ checkpoints
    def extra_state(self) -> Dict[str, Any]:
        """Engine state saved with every epoch: hook state (in run order, with the hooks' names),
        ``stop_training`` and the RNG state."""
        import random

        import numpy as np

        np_state = np.random.get_state()
        hooks = getattr(self, "hooks", [])
        return {
            "hooks": [h.state_dict() for h in hooks],
            "hook_names": hook_names(hooks),
            "stop_training": bool(self.stop_training),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype("int64")), int(np_state[2]),
                          int(np_state[3]), float(np_state[4])],
                "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            },
        }

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        for h, s in zip(self.hooks, match_hook_states(self.hooks, state.get("hooks", []), state.get("hook_names"))):
            h.load_state_dict(s)
        self._stop = bool(state.get("stop_training", False))
        rng = state.get("rng")
        if rng:
            import random

            import numpy as np

            torch.set_rng_state(rng["torch"])
            n = rng["numpy"]
            np.random.set_state((n[0], n[1].numpy().astype("uint32"), n[2], n[3], n[4]))
            py = rng["python"]
            random.setstate((py[0], tuple(py[1]), py[2]))

    def save_model(self, epoch: int, is_best: bool = False, val_result: Optional[dict] = None) -> None:
        """Commit epoch ``epoch`` (see :mod:`trainers.engine.runstate`): every module's Dassl file,
        then the run state naming them (the commit), then the best link, markers, deletions and
        the epoch's metrics records. Only rank 0 writes."""
        if not self.is_main:
            return
        out = self.output_dir
        engine = self.extra_state()
        prev = self.manifest or {}
        files = {}
        for name, module in self._models.items():
            killpoint(f"before_save:{name}", epoch)
            opt, sch = self._optims[name], self._scheds[name]
            state = {
                "state_dict": module.state_dict(),
                "epoch": epoch,
                "optimizer": opt.state_dict() if opt is not None else None,
                "scheduler": sch.state_dict() if sch is not None else None,
                "val_result": dict(val_result) if val_result else None,
                "scaler": self.scaler.state_dict(),
                "engine": engine,
            }
            path = os.path.join(out, name, ckpt_name(epoch))
            self._write(lambda p=path, st=state: (os.makedirs(os.path.dirname(p), exist_ok=True),
                                                   atomic_torch_save(st, p)), path)
            files[name] = os.path.join(name, ckpt_name(epoch))
            killpoint(f"after_save:{name}", epoch)
        period = self.settings.checkpoint_freq
        alive_prev = [k for k in prev.get("alive", []) if k != epoch]
        alive = sorted({k for k in alive_prev if period > 0 and k % period == 0} | {epoch})
        held = list(self.writer.held or [])
        manifest = {
            "version": 1,
            "epoch": epoch,
            "max_epoch": self.max_epoch,
            "modules": list(self._models),
            "files": files,
            "best_epoch": epoch if is_best else prev.get("best_epoch"),
            "stop_training": bool(self.stop_training),
            "alive": alive,
            "obsolete": sorted(k for k in alive_prev if k not in alive),
            "records": self.records + held,
            "finished": False,
            "final": None,
        }
        self._write(lambda: runstate.write_manifest(out, manifest), os.path.join(out, runstate.MANIFEST))
        self.manifest, self.records = manifest, manifest["records"]
        self.last_commit = {"dir": out, "epoch": epoch, "finished": False}
        killpoint("after_commit", epoch)
        self._write(lambda: runstate.apply_commit(out, manifest), out)
        killpoint("before_records", epoch)
        self._write(lambda: self.writer.append(held), self.writer.path)
        if self.writer.held is not None:
            self.writer.held = []

    @staticmethod
    def _write(fn, path: str) -> None:
        """Run a write; a failed one (disk full, read-only) is a one-line error, earlier files intact."""
        try:
            fn()
        except OSError as e:
            raise runstate.write_error(path, e) from None

    def _commit_final(self, results: Dict[str, float], checkpoint: Optional[Dict[str, Any]]) -> None:
        """Record that the run finished (final test done) in the run state, then in metrics.jsonl."""
        if not self.is_main:
            return
        held = list(self.writer.held or [])
        manifest = dict(self.manifest or {"version": 1, "epoch": 0, "max_epoch": self.max_epoch, "modules": [],
                                          "files": {}, "best_epoch": None, "alive": [], "obsolete": []})
        manifest.update(records=self.records + held, finished=True, stop_training=bool(self.stop_training),
                        final={"checkpoint": checkpoint, "metrics": results})
        out = self.output_dir
        self._write(lambda: runstate.write_manifest(out, manifest), os.path.join(out, runstate.MANIFEST))
        self.manifest, self.records = manifest, manifest["records"]
        self.last_commit = {"dir": out, "epoch": manifest["epoch"], "finished": True}
        killpoint("after_final_commit")
        self._write(lambda: self.writer.append(held), self.writer.path)
        if self.writer.held is not None:
            self.writer.held = []

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load weights only (``--model-dir/--load-epoch``; epoch None = best, else latest)."""
        if not self._models:
            logger.info("the trainer has no trainable modules: nothing to load")
            return
        for name, module in self._models.items():
            path = checkpoint_path(directory, name, epoch)
            ckpt = load_checkpoint(path)
            self._load_state_dict(module, ckpt["state_dict"], path)
            self.loaded_checkpoint = {"file": os.path.basename(path), "epoch": ckpt.get("epoch")}
            logger.info(f"loaded {name}: {path} ({checkpoint_summary(ckpt, getattr(self.evaluator, 'main_metric', ''))})")

    @staticmethod
    def _load_state_dict(module: nn.Module, state: Dict[str, Any], path: str) -> None:
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).replace("\n", " ").replace("\t", "")
            raise CheckpointError(f"checkpoint {path} does not fit the model: {first[:300]}") from None

    def _recover_from_files(self, directory: str, manifest: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """A run state rebuilt from the checkpoint files (no or dangling ``run_state.json``/markers)."""
        names = list(self._models)
        k = runstate.scan_checkpoints(directory, names)
        if k is None:
            left = [os.path.join(n, f"model.pth.tar-{k}") for n in names
                    for k in runstate.epochs_on_disk(os.path.join(directory, n))]
            if left:
                raise CheckpointError(
                    f"{directory} holds checkpoint files ({', '.join(left[:4])}) but no complete, readable epoch of "
                    f"every module ({', '.join(names)}): use a new --output-dir, or --restart to start over there")
            return None
        if manifest is not None:
            records = [r for r in manifest.get("records", []) if not r.get("final") and int(r.get("epoch", 0)) <= k]
        else:
            records = self._records_from_file(k)
        logger.warning(f"no valid run state in {directory}: resuming from the latest complete checkpoint files "
                       f"(epoch {k})")
        return {"version": 1, "epoch": k, "max_epoch": self.max_epoch, "modules": names,
                "files": {n: os.path.join(n, ckpt_name(k)) for n in names}, "best_epoch": None,
                "stop_training": False, "alive": [k], "obsolete": [], "records": records, "finished": False,
                "final": None, "recovered": True}

    def _records_from_file(self, k: int) -> List[Dict[str, Any]]:
        """Records of epochs <= k in an older run's metrics.jsonl, each (split, epoch) once."""
        import json

        path = os.path.join(self.output_dir, "metrics.jsonl")
        out, seen = [], set()
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    key = (r.get("split"), r.get("epoch"))
                    if isinstance(r, dict) and not r.get("final") and int(r.get("epoch", 0)) <= k and key not in seen:
                        seen.add(key)
                        out.append(r)
        return out

    def resume_if_possible(self, directory: str) -> int:
        """Restore models, optimisers, schedulers, scaler, hook, early-stopping and RNG state from the
        run state in ``directory`` (or, without a valid one, from the latest complete checkpoint
        files); return the epoch. Also finishes the follow-up of the last commit."""
        names = list(self._models)
        m = runstate.read_manifest(directory)
        if m is not None and m.get("epoch", 0) == 0 and not m.get("finished"):
            return 0  # the run started but committed no epoch: files on disk are uncommitted leftovers
        if m is not None and m.get("epoch", 0) > 0:
            files = m.get("files", {})
            if set(files) != set(names) or not all(os.path.isfile(os.path.join(directory, files[n])) for n in names):
                logger.warning(f"{runstate.MANIFEST} in {directory} names missing checkpoint files")
                m = self._recover_from_files(directory, m)
        elif m is None and names:
            m = self._recover_from_files(directory, None)
        if m is None:
            return 0
        epoch = int(m["epoch"])
        engine: Dict[str, Any] = {}
        for i, name in enumerate(names):
            path = os.path.join(directory, m["files"][name])
            ckpt = load_checkpoint(path)
            if int(ckpt.get("epoch", -1)) != epoch:
                raise CheckpointError(f"checkpoint {path} holds epoch {ckpt.get('epoch')}, the run state says {epoch}")
            self._load_state_dict(self._models[name], ckpt["state_dict"], path)
            if self._optims[name] is not None and ckpt.get("optimizer"):
                self._optims[name].load_state_dict(ckpt["optimizer"])
            if self._scheds[name] is not None and ckpt.get("scheduler"):
                self._scheds[name].load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            if i == 0:
                engine = ckpt.get("engine") or {}
        self.load_extra_state(engine)
        self._stop = bool(m.get("stop_training", self._stop))
        self.records = list(m.get("records", []))
        self.manifest = m
        if self.is_main and os.path.abspath(directory) == os.path.abspath(self.output_dir):
            runstate.remove_temporaries(directory, names)
            self._write(lambda: runstate.apply_commit(directory, m), directory)
            if m.get("recovered"):
                self._write(lambda: runstate.write_manifest(directory, m), os.path.join(directory, runstate.MANIFEST))
        if self.is_main:
            self._write(lambda: self.writer.rewrite(self.records), self.writer.path)
        self.last_commit = {"dir": self.output_dir, "epoch": epoch, "finished": False}
        logger.info(f"resumed from {directory} at epoch {epoch}"
                    + (" (training had stopped early)" if self.stop_training else ""))
        return epoch

