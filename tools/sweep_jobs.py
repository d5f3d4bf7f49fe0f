"""Running one sweep run: the subprocess, its failure record, and the submitit job around it.

Kept apart from ``tools/sweep.py`` because submitit pickles :class:`TrainRun` by reference: the job
on the cluster imports it as ``tools.sweep_jobs`` (the sweep puts the repository on ``PYTHONPATH``).
Only the standard library is imported here; submitit only inside :meth:`TrainRun.checkpoint`.
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

FAILURES = "sweep_failures.jsonl"
JOBS = "sweep_jobs.jsonl"
#: how long a run may take to stop after SIGTERM before it is killed (it keeps its last commit either way)
STOP_GRACE_S = 120.0

_lock = threading.Lock()


def execute(cmd: List[str], env: Optional[Dict[str, str]] = None, log_path: Optional[str] = None,
            started=None) -> Tuple[int, List[str]]:
    """Run ``cmd``; return (exit code, last 20 lines of its stderr). Its stderr is streamed to ours,
    or, with ``log_path``, its stdout and stderr go to that file (appended). ``started(proc)`` is
    called once the process exists (the caller keeps it to stop it).

    The child's stderr is read by a thread and the process is polled, never waited on: a signal
    handler of this process (submitit's preemption handler calling :meth:`TrainRun.checkpoint`) may
    then stop the child and wait for it itself."""
    tail: collections.deque = collections.deque(maxlen=20)
    log = None
    try:
        if log_path:
            os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
            log = open(log_path, "a", encoding="utf-8")
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.PIPE, text=True, errors="replace", env=env)
        except OSError as e:  # e.g. --python not found
            return 127, [f"cannot start {cmd[0]}: {e.strerror}"]
        sink = log or sys.stderr

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                sink.write(line)
                sink.flush()
                tail.append(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        proc.reader = reader  # type: ignore[attr-defined]  # TrainRun.checkpoint joins it
        if started is not None:
            started(proc)
        try:
            while proc.poll() is None:
                time.sleep(0.1)
        except KeyboardInterrupt:
            stop(proc)
            reader.join(timeout=10)
            raise
        reader.join()
        return proc.returncode, list(tail)
    finally:
        if log is not None:
            log.close()


def stop(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> Optional[int]:
    """SIGTERM ``proc`` (train.py keeps its last committed epoch and exits 143), SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            return proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
        except OSError:
            pass
    return proc.wait()


def append_record(output_root: str, name: str, rec: dict) -> None:
    with _lock:
        os.makedirs(output_root, exist_ok=True)
        with open(os.path.join(output_root, name), "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def record_failure(output_root: str, cmd: List[str], output_dir: str, code: int, tail: List[str]) -> None:
    append_record(output_root, FAILURES, {"cmd": shlex.join(cmd), "output_dir": output_dir, "exit_code": code,
                                          "stderr_tail": tail, "time": now()})


class RunFailed(RuntimeError):
    """A run exited with a non-zero code (raised inside a submitit job, so the job ends FAILED)."""


class TrainRun:
    """One ``train.py`` run as a submitit job.

    ``__call__`` runs the command and waits. ``checkpoint`` is submitit's preemption hook: when the
    scheduler announces a preemption or the time limit (submitit has SLURM send SIGUSR2 ``signal_delay_s``
    before it), the job's handler calls it; it sends SIGTERM to ``train.py``, which drops the step in
    progress, keeps its last committed epoch and exits; the job is then requeued with the same command,
    and ``train.py`` resumes from that epoch in the same OUTPUT_DIR (exactly: see
    ``trainers/engine/runstate.py``).
    """

    def __init__(self, cmd: List[str], output_dir: str, output_root: str, env: Optional[Dict[str, str]] = None):
        self.cmd = list(cmd)
        self.output_dir = output_dir
        self.output_root = output_root
        self.env = dict(env or {})
        self._proc: Optional[subprocess.Popen] = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_proc"] = None  # a process cannot travel with the requeued job
        return state

    def _started(self, proc: subprocess.Popen) -> None:
        self._proc = proc

    def __call__(self) -> Dict[str, object]:
        env = {**os.environ, **self.env}
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = cpus
        print(f"run: {shlex.join(self.cmd)}", flush=True)
        code, tail = execute(self.cmd, env=env, started=self._started)
        self._proc = None
        if code != 0:
            record_failure(self.output_root, self.cmd, self.output_dir, code, tail)
            raise RunFailed(f"{self.output_dir}: train.py exited with code {code}")
        return {"output_dir": self.output_dir, "exit_code": 0}

    def checkpoint(self, *args, **kwargs):
        import submitit

        proc = self._proc
        if proc is not None:
            code = stop(proc)
            reader = getattr(proc, "reader", None)
            if reader is not None:
                reader.join(timeout=10)  # its last lines (where it resumes) reach the job's log
            print(f"preempted: train.py stopped with exit code {code}; requeued, it resumes from its last "
                  f"committed epoch in {self.output_dir}", flush=True)
        return submitit.helpers.DelayedSubmission(TrainRun(self.cmd, self.output_dir, self.output_root, self.env))
