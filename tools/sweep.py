"""Run a grid of ``train.py`` runs, one subprocess each, skipping finished ones; N at once, or on SLURM.

Example::

    python tools/sweep.py --trainer CoOp \\
        --dataset-config-file configs/datasets/synthetic_emotion.yaml \\
        --config-file configs/trainers/CoOp/tiny_synthetic.yaml --root data \\
        --seeds 1 2 3 --shots 1 2 4 --grid TRAINER.COOP.N_CTX=4,16 --jobs 2 -- TRAINER.COOP.CSC False

Each run writes to ``<output-root>/<dataset>/<Trainer>/<cfg>_<shots>shots/<tag>/seed<k>``:

* ``dataset`` = ``DATASET.NAME`` of the dataset yaml, ``cfg`` = the config file's stem;
* ``<shots>`` = the ``--shots`` value, passed as ``DATASET.NUM_SHOTS``; ``-1`` (all training data,
  the default) gives the folder ``<cfg>_allshots``;
* ``tag`` = CoOp's ``nctx<N>_csc<B>_ctp<pos>`` when the trainer is CoOp and
  ``TRAINER.COOP.{N_CTX, CSC, CLASS_TOKEN_POSITION}`` are all given (as ``--grid`` axes or
  trailing opts), followed by the other grid axes; otherwise the grid axes as ``key-value``
  joined by ``_`` (key = last component of the config key, lowercased; the whole key where
  two axes share a last component); ``default`` without any.

A run's identity is its whole config, not only its folder: a folder that holds a ``config.yaml``
is compared with the config this sweep would give the run (every key except those that cannot
change results, ``runstate.NON_RESULT_KEYS``: workers, print frequency, cache folders, ...). A
finished run with the same config is skipped; a run with another config is refused with one line
naming the keys (``--rerun-changed`` starts it over with ``train.py --restart``). A trainer whose
results do not depend on the seed (``SEED_INDEPENDENT = True``, e.g. ZeroshotCLIP) runs once, with
the first seed, for all ``--seeds``.

A run is finished when its ``metrics.jsonl`` has a record with ``"final": true``. A failed run
(non-zero exit) is appended to ``<output-root>/sweep_failures.jsonl`` and the sweep goes on.
``--jobs N`` runs N at once (one GPU each, or the CPU threads split); ``--launcher slurm`` submits
the runs as one SLURM job array through submitit, whose jobs are requeued and resume when
preempted; ``--status`` says which runs finished, failed, started or are pending. Exit status: 0
all ran or were skipped, 1 some failed or were refused, 2 bad arguments. See docs/SWEEPS.md.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import os
import queue
import re
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import sweep_jobs  # noqa: E402
from tools.sweep_jobs import FAILURES, JOBS, TrainRun, append_record, now, record_failure, stop  # noqa: E402
from utils.fileio import read_records  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
COOP_KEYS = ("TRAINER.COOP.N_CTX", "TRAINER.COOP.CSC", "TRAINER.COOP.CLASS_TOKEN_POSITION")
COOP_SHORT = ("nctx", "csc", "ctp")
LAUNCHERS = ("local", "slurm", "submitit-local")


class SweepError(Exception):
    """A bad argument or input file: printed as ``error: <msg>``, exit 2."""


@dataclass
class Run:
    cmd: List[str]
    output_dir: str
    opts: List[str] = field(default_factory=list)
    argv: List[str] = field(default_factory=list)  # the train.py arguments (cmd without python and script)
    restart: bool = False  # --rerun-changed on a folder that holds another config


def parse_grid(specs: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """``["OPTIM.LR=0.1,0.01"] -> [("OPTIM.LR", ["0.1", "0.01"])]``."""
    axes: List[Tuple[str, List[str]]] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise SweepError(f"bad --grid {spec!r} (expected KEY=v1,v2,...)")
        if key.strip() in [k for k, _ in axes]:
            raise SweepError(f"--grid axis {key.strip()} given twice")
        axes.append((key.strip(), vals))
    return axes


def pairs(opts: Sequence[str]) -> Dict[str, str]:
    """Trailing ``KEY VALUE`` opts as a dict."""
    if len(opts) % 2:
        raise SweepError(f"trailing opts must be KEY VALUE pairs, got an odd number: {' '.join(opts)}")
    return dict(zip(opts[0::2], opts[1::2]))


def safe(value: str) -> str:
    """A value usable in a folder name (``ViT-B/16 -> ViT-B-16``)."""
    return re.sub(r"[^A-Za-z0-9.+\-]+", "-", value).strip("-") or "none"


def short_keys(keys: Sequence[str]) -> Dict[str, str]:
    last = [k.split(".")[-1].lower() for k in keys]
    return {k: (s if last.count(s) == 1 else k.lower()) for k, s in zip(keys, last)}


def make_tag(trainer: str, combo: Dict[str, str], extra: Dict[str, str]) -> str:
    """The run-setting folder name (see the module docstring)."""
    given = {**extra, **combo}
    parts: List[str] = []
    grid_keys = list(combo)
    if trainer == "CoOp" and all(k in given for k in COOP_KEYS):
        parts += [f"{s}{safe(given[k])}" for k, s in zip(COOP_KEYS, COOP_SHORT)]
        grid_keys = [k for k in grid_keys if k not in COOP_KEYS]
    short = short_keys(grid_keys)
    parts += [f"{short[k]}-{safe(combo[k])}" for k in grid_keys]
    return "_".join(parts) or "default"


def dataset_name(path: str) -> str:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise SweepError(f"cannot read dataset config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SweepError(f"dataset config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    name = (data.get("DATASET") or {}).get("NAME") if isinstance(data, dict) else None
    if not name:
        raise SweepError(f"dataset config {path} has no DATASET.NAME")
    return str(name)


def seed_independent(trainer: str, imports: Sequence[str]) -> bool:
    """True when the registered trainer says its results do not depend on the seed."""
    try:
        from trainers.extensions import import_extensions
        from trainers import TRAINER_REGISTRY

        import_extensions(list(imports))
        cls = TRAINER_REGISTRY.get(trainer)
    except Exception:  # noqa: BLE001 - an unknown trainer (train.py will name it) counts as seed-dependent
        return False
    return bool(getattr(cls, "SEED_INDEPENDENT", False))


def plan(args: argparse.Namespace) -> List[Run]:
    """All runs of the sweep, in order shots -> grid point -> seed."""
    if not os.path.isfile(args.config_file):
        raise SweepError(f"config file not found: {args.config_file}")
    dataset = safe(dataset_name(args.dataset_config_file))
    cfg_name = Path(args.config_file).stem
    axes = parse_grid(args.grid)
    extra_opts = list(args.opts)
    if extra_opts and extra_opts[0] == "--":
        extra_opts = extra_opts[1:]
    extra = pairs(extra_opts)
    for key, _ in axes:
        if key in extra:
            raise SweepError(f"{key} is both a --grid axis and a trailing opt")
    if "DATASET.NUM_SHOTS" in extra or any(k == "DATASET.NUM_SHOTS" for k, _ in axes):
        raise SweepError("give the shots with --shots, not DATASET.NUM_SHOTS")
    if "SEED" in extra or any(k == "SEED" for k, _ in axes):
        raise SweepError("give the seeds with --seeds, not SEED")
    seeds = list(args.seeds)
    if len(seeds) > 1 and seed_independent(args.trainer, args.imports):
        print(f"{args.trainer} does not depend on the seed (SEED_INDEPENDENT): one run with seed {seeds[0]} "
              f"stands for seeds {' '.join(map(str, seeds))}", flush=True)
        seeds = seeds[:1]
    runs: List[Run] = []
    for shots in args.shots:
        shots_dir = f"{cfg_name}_{'all' if shots < 0 else shots}shots"
        for values in itertools.product(*[v for _, v in axes]):
            combo = dict(zip([k for k, _ in axes], values))
            tag = make_tag(args.trainer, combo, extra)
            for seed in seeds:
                out = os.path.join(args.output_root, dataset, args.trainer, shots_dir, tag, f"seed{seed}")
                opts = ["DATASET.NUM_SHOTS", str(shots)]
                for k, v in combo.items():
                    opts += [k, v]
                opts += extra_opts
                argv = ["--root", args.root, "--seed", str(seed), "--trainer", args.trainer,
                        "--dataset-config-file", args.dataset_config_file, "--config-file", args.config_file,
                        "--output-dir", out]
                for m in args.imports:
                    argv += ["--import", m]
                argv += opts
                runs.append(Run([args.python, args.train_script, *argv], out, opts, argv))
    return runs


def is_finished(output_dir: str) -> bool:
    """True when ``output_dir/metrics.jsonl`` has a record with ``"final": true``."""
    return any(rec.get("final") is True for rec in read_records(output_dir))


def config_conflict(run: Run) -> List[str]:
    """The result-changing keys in which the run folder's ``config.yaml`` differs from the config this
    sweep gives the run (``KEY old -> new``); empty when the folder has no config or they agree."""
    saved = os.path.join(run.output_dir, "config.yaml")
    if not os.path.isfile(saved):
        return []
    import train
    from trainers.engine import runstate
    from trainers.extensions import import_extensions
    from utils.errors import EmoLabError

    args = train.build_parser().parse_args(run.argv)
    try:
        import_extensions(args.imports)
        cfg = train.setup_cfg(args)
        return runstate.config_changes(saved, cfg.dump())
    except EmoLabError as e:  # a bad config: train.py says so in one line when the run starts
        return [f"(cannot build this run's config: {e})"]


def classify(runs: Sequence[Run], rerun_changed: bool) -> Tuple[List[Run], List[Run], List[Tuple[Run, List[str]]]]:
    """(to run, finished, refused with the changed keys); with ``rerun_changed`` a changed run is started
    over (``train.py --restart``) instead of refused."""
    todo, done, refused = [], [], []
    for run in runs:
        changes = config_conflict(run)
        if changes and not rerun_changed:
            refused.append((run, changes))
        elif changes:
            run.restart = True
            run.cmd = _flag_before_opts(run, "--restart")  # before the trailing KEY VALUE opts
            todo.append(run)
        elif is_finished(run.output_dir):
            done.append(run)
        else:
            todo.append(run)
    return todo, done, refused


def _flag_before_opts(run: Run, flag: str) -> List[str]:
    cmd = [c for c in run.cmd if c != flag]
    n_opts = len(run.opts)
    return cmd[:len(cmd) - n_opts] + [flag] + cmd[len(cmd) - n_opts:]


def conflict_line(run: Run, changes: List[str]) -> str:
    shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
    return (f"{run.output_dir} holds a run with another config ({shown}): not run, not reported; "
            "add --rerun-changed to start it over, or use another --output-root")


# ---------------------------------------------------------------------------------------------- local runs
def execute(run: Run, env: Optional[Dict[str, str]] = None, log_path: Optional[str] = None,
            started=None) -> Tuple[int, List[str]]:
    """Run one run's command: (exit code, last 20 stderr lines); see ``sweep_jobs.execute`` (tests
    replace this function to run ``train.py`` in-process)."""
    return sweep_jobs.execute(run.cmd, env=env, log_path=log_path, started=started)


def detect_gpus(spec: Optional[str]) -> List[str]:
    """GPU ids for ``--gpus`` (``none`` = CPU only), else ``CUDA_VISIBLE_DEVICES``, else what torch sees."""
    if spec is not None:
        return [] if spec.strip().lower() in ("", "none", "cpu") else [g.strip() for g in spec.split(",") if g.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001
        return []


def slot_envs(jobs: int, gpus: List[str]) -> List[Dict[str, str]]:
    """The environment changes of each of the ``jobs`` slots: one GPU each where there are GPUs, else
    the CPU cores split (``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, unless the user set them)."""
    if gpus:
        if jobs > len(gpus):
            raise SweepError(f"--jobs {jobs} needs {jobs} GPUs, one per run, but {len(gpus)} are visible "
                             f"({','.join(gpus)}): lower --jobs or give --gpus")
        return [{"CUDA_VISIBLE_DEVICES": gpus[i]} for i in range(jobs)]
    if jobs == 1 or "OMP_NUM_THREADS" in os.environ:
        return [{} for _ in range(jobs)]
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(jobs)]


def run_local(todo: List[Run], args: argparse.Namespace, n_total: int, counter: Dict[str, int]) -> List[Run]:
    """Run ``todo``, ``args.jobs`` at once; one line per finished run; returns the failed runs."""
    gpus = detect_gpus(args.gpus)
    envs = slot_envs(args.jobs, gpus)
    if args.jobs > 1:
        where = (f"GPU {', '.join(e['CUDA_VISIBLE_DEVICES'] for e in envs)}, one each" if gpus else
                 f"CPU, {envs[0].get('OMP_NUM_THREADS', os.environ.get('OMP_NUM_THREADS', 'default'))} thread(s) each")
        print(f"{args.jobs} runs at once on {where}; each run's output goes to <output-dir>/sweep_log.txt",
              flush=True)
    slots: "queue.Queue[int]" = queue.Queue()
    for i in range(args.jobs):
        slots.put(i)
    procs: Dict[int, object] = {}
    failed: List[Run] = []
    lock = threading.Lock()
    stopping = threading.Event()

    def one(run: Run) -> None:
        if stopping.is_set():
            return
        slot = slots.get()
        try:
            env = {**os.environ, **envs[slot]}
            t0 = time.time()
            log = os.path.join(run.output_dir, "sweep_log.txt") if args.jobs > 1 else None
            if args.jobs == 1:
                print(f"{run.output_dir}\n  {shlex.join(run.cmd)}", flush=True)
            code, tail = execute(run, env=env, log_path=log, started=lambda p: procs.__setitem__(id(run), p))
            procs.pop(id(run), None)
            if stopping.is_set():
                return
            with lock:
                counter["done"] += 1
                head = f"[{counter['done']}/{n_total}] {run.output_dir}"
                if code == 0:
                    on_gpu = f" on GPU {envs[slot]['CUDA_VISIBLE_DEVICES']}" if gpus else ""
                    print(f"{head}: done in {time.time() - t0:.1f} s{on_gpu}", flush=True)
                else:
                    failed.append(run)
                    record_failure(args.output_root, run.cmd, run.output_dir, code, tail)
                    where = f"; its output: {log}" if log else ""
                    print(f"{head}: FAILED with exit code {code} after {time.time() - t0:.1f} s{where}", flush=True)
        finally:
            slots.put(slot)

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(one, run) for run in todo]
        try:
            for f in futures:
                while True:
                    try:
                        f.result(timeout=0.5)  # a timeout so that Ctrl-C / SIGTERM reach this thread
                        break
                    except concurrent.futures.TimeoutError:
                        continue
        except KeyboardInterrupt:
            stopping.set()
            for f in futures:
                f.cancel()
            running = list(procs.values())
            for p in running:
                stop(p)  # each run keeps its last committed epoch
            print(f"sweep stopped: {len(running)} running run(s) were stopped at their last committed epoch; "
                  "rerun the same sweep to resume them", file=sys.stderr, flush=True)
            raise
    return failed


# ---------------------------------------------------------------------------------------------- submitit
def parse_sbatch(items: Sequence[str]) -> Dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise SweepError(f"bad --sbatch {item!r} (expected KEY=VALUE, e.g. qos=high or constraint=a100)")
        out[key] = value.strip() if sep else ""
    return out


def slurm_parameters(args: argparse.Namespace) -> Dict[str, object]:
    """The submitit (AutoExecutor) parameters for ``args``: the resources of one run."""
    params: Dict[str, object] = {
        "name": f"sweep-{args.trainer}",
        "timeout_min": args.time,
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": args.gpus_per_run,
        "cpus_per_task": args.cpus_per_run,
        "slurm_signal_delay_s": args.signal_delay,
    }
    if args.mem is not None:
        params["mem_gb"] = args.mem
    if args.partition:
        params["slurm_partition"] = args.partition
    if args.account:
        params["slurm_account"] = args.account
    if args.array_parallelism:
        params["slurm_array_parallelism"] = args.array_parallelism
    extra = parse_sbatch(args.sbatch)
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


def job_env(args: argparse.Namespace) -> Dict[str, str]:
    """Environment for each job: CPU threads = the CPUs asked for (unless set by the user)."""
    return {} if "OMP_NUM_THREADS" in os.environ else {"OMP_NUM_THREADS": str(args.cpus_per_run)}


def _setup_lines() -> List[str]:
    # the job imports tools.sweep_jobs: the repository goes on its PYTHONPATH
    return [f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"]


def make_executor(args: argparse.Namespace, folder: str):
    try:
        import submitit
    except ImportError:
        raise SweepError(f"--launcher {args.launcher} needs submitit (pip install submitit; see docs/SWEEPS.md)") from None
    cluster = "local" if args.launcher == "submitit-local" else "slurm"
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=args.max_timeouts)
    except RuntimeError as e:  # e.g. no srun on this machine
        raise SweepError(f"--launcher {args.launcher}: {e}") from None
    ex.update_parameters(**slurm_parameters(args), slurm_setup=_setup_lines(), local_setup=_setup_lines())
    return ex


def sbatch_text(todo: List[Run], args: argparse.Namespace, folder: str) -> Optional[str]:
    """The sbatch script submitit would write for this array (None without submitit)."""
    try:
        from submitit.slurm.slurm import _make_sbatch_string
    except ImportError:
        return None
    p = slurm_parameters(args)
    kw = dict(job_name=p["name"], time=p["timeout_min"], nodes=1, ntasks_per_node=1, cpus_per_task=p["cpus_per_task"],
              gpus_per_node=p["gpus_per_node"] or None, partition=p.get("slurm_partition"),
              account=p.get("slurm_account"), signal_delay_s=p["slurm_signal_delay_s"],
              additional_parameters=p.get("slurm_additional_parameters"), setup=_setup_lines(),
              map_count=len(todo), array_parallelism=p.get("slurm_array_parallelism", 256))
    if "mem_gb" in p:
        kw["mem"] = f"{p['mem_gb']}GB"
    try:
        return _make_sbatch_string(command=f"{args.python} -u -m submitit.core._submit {shlex.quote(folder)}",
                                   folder=folder, **kw)
    except TypeError:  # another submitit version
        return None


def describe_submission(todo: List[Run], args: argparse.Namespace, folder: str) -> None:
    params = slurm_parameters(args)
    print(f"would submit {len(todo)} run(s) as one SLURM job array through submitit (logs in {folder}):")
    for k, v in params.items():
        print(f"  {k}: {v}")
    print(f"  requeue: on preemption, and on the time limit at most {args.max_timeouts} time(s) "
          f"(SIGUSR2 {args.signal_delay} s before it); each requeued run resumes from its last committed epoch")
    text = sbatch_text(todo, args, folder)
    if text:
        print("sbatch script:\n" + "\n".join("  | " + line for line in text.splitlines()))


def submit(todo: List[Run], args: argparse.Namespace, n_total: int, counter: Dict[str, int]) -> List[Run]:
    """Submit ``todo`` through submitit; with ``--wait``, wait and report like local runs. Returns the
    failed runs (none when not waiting)."""
    folder = args.submitit_folder or os.path.join(args.output_root, "submitit")
    ex = make_executor(args, folder)
    env = job_env(args)
    jobs = []
    with ex.batch():
        for run in todo:
            jobs.append(ex.submit(TrainRun(run.cmd, run.output_dir, args.output_root, env)))
    for run, job in zip(todo, jobs):
        append_record(args.output_root, JOBS, {"output_dir": run.output_dir, "job_id": str(job.job_id),
                                               "launcher": args.launcher, "folder": folder, "time": now()})
    ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
    print(f"submitted {len(jobs)} run(s) ({args.launcher}, job {', '.join(ids)}; logs in {folder}); "
          f"'--status' with the same arguments says which finished, failed or are pending", flush=True)
    if not args.wait:
        return []
    failed = []
    pending = dict(zip(range(len(jobs)), zip(todo, jobs)))
    t0 = time.time()
    while pending:
        for i, (run, job) in list(pending.items()):
            if not job.done():
                continue
            del pending[i]
            counter["done"] += 1
            head = f"[{counter['done']}/{n_total}] {run.output_dir}"
            try:
                job.result()
                print(f"{head}: done (job {job.job_id}) after {time.time() - t0:.1f} s", flush=True)
            except Exception as e:  # noqa: BLE001 - submitit re-raises the job's error
                failed.append(run)
                print(f"{head}: FAILED (job {job.job_id}): {str(e).strip().splitlines()[-1] if str(e).strip() else e}",
                      flush=True)
        time.sleep(0.5)
    return failed


# ---------------------------------------------------------------------------------------------- status
def _last_by_dir(path: str) -> Dict[str, dict]:
    import json

    out: Dict[str, dict] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and "output_dir" in rec:
                    out[rec["output_dir"]] = rec
    except OSError:
        pass
    return out


def run_status(run: Run, failures: Dict[str, dict], jobs: Dict[str, dict]) -> Tuple[str, str]:
    """(state, detail) of one run: finished, failed, started, pending, or refused (its folder holds
    another config: the sweep would not run it, and its result is not this run's)."""
    import json

    job = jobs.get(run.output_dir)
    fail = failures.get(run.output_dir)
    job_note = f" (job {job['job_id']}, {job['launcher']})" if job else ""
    changes = config_conflict(run)
    if changes:
        return "refused", "holds a run with another config (" + "; ".join(changes[:8]) + ")"
    if is_finished(run.output_dir):
        return "finished", ""
    epoch, max_epoch = None, None
    try:
        with open(os.path.join(run.output_dir, "run_state.json"), encoding="utf-8") as f:
            m = json.load(f)
        epoch, max_epoch = m.get("epoch"), m.get("max_epoch")
    except (OSError, ValueError):
        pass
    progress = f"epoch {epoch}/{max_epoch} committed" if epoch is not None else "no epoch committed"
    if fail and (not job or fail.get("time", "") >= job.get("time", "")):
        return "failed", f"exit code {fail.get('exit_code')} at {fail.get('time')}, {progress}{job_note}"
    if epoch is not None:
        return "started", progress + job_note
    return "pending", ("submitted" + job_note) if job else "not started"


def status(runs: List[Run], args: argparse.Namespace) -> int:
    failures = _last_by_dir(os.path.join(args.output_root, FAILURES))
    jobs = _last_by_dir(os.path.join(args.output_root, JOBS))
    counts: Dict[str, int] = {}
    for run in runs:
        state, detail = run_status(run, failures, jobs)
        counts[state] = counts.get(state, 0) + 1
        print(f"{state:8s} {run.output_dir}" + (f": {detail}" if detail else ""))
    print(f"status: {len(runs)} runs: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in
                                                    ("finished", "failed", "started", "pending"))
          + (f", {counts['refused']} refused (another config)" if counts.get("refused") else ""))
    return 0


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Run a grid of train.py runs (one subprocess each); finished runs are skipped.",
        epilog="Anything after '--' is passed to every run as trailing KEY VALUE opts. See docs/SWEEPS.md.",
    )
    p.add_argument("--trainer", required=True, help="trainer name, e.g. CoOp")
    p.add_argument("--dataset-config-file", required=True, help="dataset yaml (its DATASET.NAME names the folder)")
    p.add_argument("--config-file", required=True, help="trainer yaml (its stem names the folder)")
    p.add_argument("--root", default="data", help="dataset root passed to train.py (default: data)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds (default: 1 2 3)")
    p.add_argument("--shots", type=int, nargs="+", default=[-1],
                   help="DATASET.NUM_SHOTS values; -1 = all data, folder '<cfg>_allshots' (default: -1)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=v1,v2",
                   help="a grid axis over a config key (repeatable)")
    p.add_argument("--output-root", default="output", help="root of the run folders (default: output)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="passed to every run as train.py --import (repeatable)")
    p.add_argument("--rerun-changed", action="store_true",
                   help="start over (train.py --restart) a run whose folder holds another config, instead of refusing it")
    p.add_argument("--dry-run", action="store_true", help="print the commands (and the SLURM request), run nothing")
    p.add_argument("--status", action="store_true", help="say which runs finished, failed, started or are pending")
    p.add_argument("--python", default=sys.executable, help="python interpreter for the runs")
    p.add_argument("--train-script", default=str(REPO_ROOT / "train.py"), help="training script (default: train.py)")
    g = p.add_argument_group("on this machine")
    g.add_argument("--jobs", type=int, default=1, help="runs at once (default 1): one GPU each, else the CPU threads split")
    g.add_argument("--gpus", default=None, metavar="0,1",
                   help="GPU ids to hand out with --jobs (default: CUDA_VISIBLE_DEVICES, else all; 'none' = CPU)")
    s = p.add_argument_group("on a cluster (--launcher slurm, through submitit)")
    s.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local (default); slurm: one job array through submitit; submitit-local: the same jobs "
                        "through submitit's local executor (tests, no SLURM)")
    s.add_argument("--partition", default=None, help="SLURM partition")
    s.add_argument("--account", default=None, help="SLURM account")
    s.add_argument("--gpus-per-run", type=int, default=1, help="GPUs per run (default 1; 0 on CPU partitions)")
    s.add_argument("--cpus-per-run", type=int, default=4, help="CPU cores per run (default 4; OMP_NUM_THREADS)")
    s.add_argument("--mem", type=int, default=None, metavar="GB", help="memory per run in GB")
    s.add_argument("--time", type=int, default=240, metavar="MIN", help="time limit per job in minutes (default 240)")
    s.add_argument("--array-parallelism", type=int, default=None, help="at most this many runs of the array at once")
    s.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sbatch option, e.g. qos=high or constraint=a100 (repeatable)")
    s.add_argument("--signal-delay", type=int, default=120, metavar="S",
                   help="SLURM sends SIGUSR2 this many seconds before the time limit (default 120)")
    s.add_argument("--max-timeouts", type=int, default=3, help="requeues after the time limit (default 3)")
    s.add_argument("--submitit-folder", default=None, help="job logs (default: <output-root>/submitit)")
    s.add_argument("--wait", action="store_true", help="wait for the submitted jobs and report each one")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE opts for every run (after '--')")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from utils import signals

    args = build_parser().parse_args(argv)
    t0 = time.time()
    try:
        if args.jobs < 1:
            raise SweepError(f"--jobs {args.jobs} must be at least 1")
        runs = plan(args)
        if args.status:
            return status(runs, args)
        if args.launcher != "local":
            parse_sbatch(args.sbatch)
        todo, done, refused = classify(runs, args.rerun_changed)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    index = {id(r): i for i, r in enumerate(runs, 1)}
    for run in done:
        print(f"[{index[id(run)]}/{len(runs)}] {run.output_dir}: finished, skipping", flush=True)
    for run, changes in refused:
        print(f"[{index[id(run)]}/{len(runs)}] {conflict_line(run, changes)}", flush=True)
    if args.dry_run:
        for run in todo:
            print(f"[{index[id(run)]}/{len(runs)}] {run.output_dir}\n  {shlex.join(run.cmd)}", flush=True)
        if args.launcher != "local" and todo:
            describe_submission(todo, args, args.submitit_folder or os.path.join(args.output_root, "submitit"))
        print(f"dry run: {len(runs)} runs, {len(todo)} to run, {len(done)} finished"
              + (f", {len(refused)} refused (another config)" if refused else ""))
        return 1 if refused else 0
    counter = {"done": len(done) + len(refused)}
    try:
        with signals.stop_signals_raise():
            if args.launcher == "local":
                failed = run_local(todo, args, len(runs), counter)
            else:
                failed = submit(todo, args, len(runs), counter)
                if not args.wait:
                    return 1 if refused else 0
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        return signals.exit_code(e)
    print(f"sweep done: {len(runs)} runs: ran {len(todo)}, skipped {len(done)}, failed {len(failed)}, "
          f"refused {len(refused)} (another config); {time.time() - t0:.1f} s")
    if failed:
        print(f"failures recorded in {os.path.join(args.output_root, FAILURES)}")
    return 1 if failed or refused else 0


if __name__ == "__main__":
    from utils.cli import run_tool  # one line for OSError / EmoLabError, no traceback

    sys.exit(run_tool(main))
