"""Experiment trackers beside TensorBoard: Weights & Biases (offline) and MLflow (local files).

``TRAIN.LOGGERS`` names the trackers (``["tensorboard", "wandb", "mlflow"]``, default
``["tensorboard"]``). Each gets what TensorBoard gets from :class:`~trainers.engine.logger.MetricsWriter`:
the scalars (``train/loss``, ``val/accuracy``, ``train_iter/lr``...), the figures, and at the end the
hyper-parameters with the final metrics. Their packages are imported only when asked for; a missing
one is a one-line error at start-up (``configs/cli.py: check_loggers``), before anything is built.

* ``wandb`` runs in offline mode into ``OUTPUT_DIR/wandb/`` (``wandb sync OUTPUT_DIR/wandb/offline-run-*``
  uploads it later); the run id is derived from the output folder, so a resumed run continues it.
  Each tag has its own step axis (``train/step`` = epoch, ``train_iter/step`` = iteration).
* ``mlflow`` writes a local file store in ``OUTPUT_DIR/mlruns`` (``mlflow ui --backend-store-uri
  OUTPUT_DIR/mlruns``; MLflow 3 keeps this store behind ``MLFLOW_ALLOW_FILE_STORE=true``, which is
  set for the run unless the environment sets it), experiment = ``<dataset>/<trainer>``; the config goes in as parameters. Metric
  names keep MLflow's allowed characters (``hit@1`` -> ``hit_1``).
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Dict, List, Tuple

from configs.config import flatten


class Tracker:
    """What a tracker receives (the same calls as TensorBoard)."""

    def scalars(self, tag: str, values: Dict[str, float], step: int) -> None: ...

    def figure(self, tag: str, fig: Any, step: int = 0) -> None: ...

    def hparams(self, hparams: Dict[str, Any], metrics: Dict[str, float]) -> None: ...

    def close(self) -> None: ...


class WandbTracker(Tracker):
    def __init__(self, output_dir: str, name: str, project: str, config: Dict[str, Any]) -> None:
        import wandb

        self._wandb = wandb
        run_id = hashlib.sha1(os.path.abspath(output_dir).encode()).hexdigest()[:12]
        self.run = wandb.init(mode="offline", dir=output_dir, project=project, name=name, id=run_id,
                              resume="allow", config=config, reinit="create_new", settings=wandb.Settings(
                                  silent=True, console="off", x_disable_stats=True, x_disable_meta=True))
        self._axes: set = set()

    def scalars(self, tag: str, values: Dict[str, float], step: int) -> None:
        if tag not in self._axes:
            self.run.define_metric(f"{tag}/step")
            self.run.define_metric(f"{tag}/*", step_metric=f"{tag}/step")
            self._axes.add(tag)
        self.run.log({f"{tag}/step": step, **{f"{tag}/{k}": float(v) for k, v in values.items()}})

    def figure(self, tag: str, fig: Any, step: int = 0) -> None:
        self.run.log({tag: self._wandb.Image(fig)})

    def hparams(self, hparams: Dict[str, Any], metrics: Dict[str, float]) -> None:
        self.run.summary.update({f"final/{k}": float(v) for k, v in metrics.items()})

    def close(self) -> None:
        self.run.finish()


_MLFLOW_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def mlflow_key(name: str) -> str:
    """A metric / parameter name MLflow accepts (alphanumerics, ``_ - . /`` and space)."""
    return _MLFLOW_BAD.sub("_", name)


class MlflowTracker(Tracker):
    def __init__(self, output_dir: str, name: str, experiment: str, params: Dict[str, Any]) -> None:
        # MLflow 3 keeps the file store in maintenance mode behind this switch; a local folder of plain files
        # needs no database package (mlflow-skinny has none)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.store = os.path.join(os.path.abspath(output_dir), "mlruns")
        self.client = MlflowClient(tracking_uri="file:" + self.store)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id
        from mlflow.entities import Param

        items = [Param(mlflow_key(k), str(v)[:500]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def scalars(self, tag: str, values: Dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(mlflow_key(f"{tag}/{k}"), float(v), stamp, int(step))
                                                    for k, v in values.items()])

    def figure(self, tag: str, fig: Any, step: int = 0) -> None:
        self.client.log_figure(self.run_id, fig, mlflow_key(tag) + ".png")

    def hparams(self, hparams: Dict[str, Any], metrics: Dict[str, float]) -> None:
        for k, v in metrics.items():
            self.client.log_metric(self.run_id, mlflow_key(f"final/{k}"), float(v))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def trackers_from_cfg(cfg) -> Tuple[bool, List[Tracker]]:
    """``(TensorBoard on, [other trackers])`` from ``TRAIN.LOGGERS`` (packages imported only here)."""
    names = [str(n).lower() for n in cfg.TRAIN.LOGGERS]
    out = cfg.OUTPUT_DIR
    name = os.path.basename(os.path.normpath(out)) or "run"
    group = f"{cfg.DATASET.NAME}/{cfg.TRAINER.NAME}"
    params = {k: v for k, v in flatten(cfg)}
    trackers: List[Tracker] = []
    if "wandb" in names:
        trackers.append(WandbTracker(out, name, group.replace("/", "-"), params))
    if "mlflow" in names:
        trackers.append(MlflowTracker(out, name, group, params))
    return "tensorboard" in names, trackers
