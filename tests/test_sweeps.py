"""Sweeps beyond one process (issue 22): run identity, --jobs, submitit with preemption, stop signals,
two-node torchrun. Real (tiny) train.py runs in subprocesses; timeouts are hang guards only."""
from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import COOP_CFG, ROOT, SYN_CFG, final_test, read_metrics, run_cli
from tools import sweep

#: tiny runs: 32 training images in batches of 8 (4 steps an epoch, so "mid-epoch" exists), 2 epochs
TINY = ["DATASET.SYNTHETIC.N_TRAIN_PER_CLASS", "4", "DATASET.SYNTHETIC.N_VAL_PER_CLASS", "2",
        "DATASET.SYNTHETIC.N_TEST_PER_CLASS", "3", "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
        "TRAIN.PROGRESS_BAR", "False", "OPTIM.MAX_EPOCH", "2"]
#: the preempted / signalled run of the 4-run sweeps, and its folder under the output root
PAUSED = os.path.join("tiny_synthetic_2shots", "default", "seed2")
PAUSED_RUN = os.path.join("SyntheticEmotion", "PausingCoOp", PAUSED)
GUARD = 900  # seconds: hang guard for subprocesses, never a speed requirement


def sweep_argv(data_root, out_root, *extra, seeds=("1", "2"), shots=("1", "2"), opts=()):
    return ["--trainer", "PausingCoOp", "--import", "tests.pause_trainer", "--dataset-config-file", SYN_CFG,
            "--config-file", COOP_CFG, "--root", data_root, "--seeds", *seeds, "--shots", *shots,
            "--output-root", str(out_root), *extra, "--", *TINY, *opts]


def finals(out_root) -> dict:
    """{run folder relative to the root: final test metrics} of every finished run under ``out_root``."""
    out = {}
    for path in glob.glob(os.path.join(str(out_root), "**", "metrics.jsonl"), recursive=True):
        d = os.path.dirname(path)
        if any(r.get("final") for r in read_metrics(d)):
            out[os.path.relpath(d, str(out_root))] = final_test(d)
    return out


@pytest.fixture(autouse=True)
def _one_thread_per_run(monkeypatch):
    # every run here, whatever launched it, uses one CPU thread: float sums then happen in the same order
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """The 4-run sweep (seeds 1 2 x shots 1 2, 2 epochs) run one at a time, uninterrupted."""
    root = tmp_path_factory.mktemp("ref")
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert sweep.main(sweep_argv(data_root, root, "--jobs", "1")) == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    res = finals(root)
    assert len(res) == 4
    return root, res


# ----------------------------------------------------------------------------- run identity
def test_changed_result_option_is_refused_then_rerun(data_root, tmp_path, capsys):
    """Rerunning a sweep with another MAX_EPOCH must not report the old runs as the new ones."""
    root = tmp_path / "out"
    argv = lambda *opts, extra=(): sweep_argv(data_root, root, *extra, seeds=("1",), shots=("2",),  # noqa: E731
                                              opts=opts)
    assert sweep.main(argv()) == 0
    run_dir = root / "SyntheticEmotion" / "PausingCoOp" / PAUSED.replace("seed2", "seed1")
    first = final_test(str(run_dir))
    capsys.readouterr()

    assert sweep.main(argv("OPTIM.MAX_EPOCH", "3")) == 1  # the later value wins in train.py's merge
    out = capsys.readouterr().out
    assert "finished, skipping" not in out
    assert f"{run_dir} holds a run with another config (OPTIM.MAX_EPOCH 2 -> 3): not run" in out
    assert "refused 1 (another config)" in out
    assert final_test(str(run_dir)) == first  # nothing touched
    assert sweep.main(argv("OPTIM.MAX_EPOCH", "3", extra=("--status",))) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        f"refused  {run_dir}: holds a run with another config (OPTIM.MAX_EPOCH 2 -> 3)",
        "status: 1 runs: 0 finished, 0 failed, 0 started, 0 pending, 1 refused (another config)"]

    # options that cannot change results do not change the run's identity
    assert sweep.main(argv("TRAIN.PRINT_FREQ", "3", "CACHE.DIR", str(tmp_path / "other_cache"))) == 0
    assert "finished, skipping" in capsys.readouterr().out

    assert sweep.main(argv("OPTIM.MAX_EPOCH", "3", extra=("--rerun-changed",))) == 0
    recs = read_metrics(str(run_dir))
    assert [r["epoch"] for r in recs if r["split"] == "train"] == [1, 2, 3]  # a fresh 3-epoch run
    assert sum(1 for r in recs if r.get("final")) == 1
    capsys.readouterr()
    assert sweep.main(argv("OPTIM.MAX_EPOCH", "3")) == 0
    assert "finished, skipping" in capsys.readouterr().out


def test_seed_independent_trainer_runs_once(data_root, tmp_path, capsys):
    zs_cfg = os.path.join(ROOT, "configs/trainers/ZeroshotCLIP/tiny_synthetic.yaml")
    args = ["--trainer", "ZeroshotCLIP", "--dataset-config-file", SYN_CFG, "--config-file", zs_cfg,
            "--seeds", "1", "2", "3", "--output-root", str(tmp_path), "--dry-run"]
    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    assert "ZeroshotCLIP does not depend on the seed (SEED_INDEPENDENT): one run with seed 1 stands for seeds 1 2 3" in out
    assert out.count("--seed ") == 1 and out.splitlines()[-1] == "dry run: 1 runs, 1 to run, 0 finished"
    # the claim itself: two seeds give the same numbers
    res = []
    for seed in ("1", "2"):
        d = tmp_path / f"zs{seed}"
        assert run_cli(["--root", data_root, "--seed", seed, "--trainer", "ZeroshotCLIP", "--output-dir", str(d),
                        "--config-file", zs_cfg, "--dataset-config-file", SYN_CFG, *TINY[:6]]) == 0
        res.append(final_test(str(d)))
    assert res[0] == res[1]


# ----------------------------------------------------------------------------- --jobs
FAKE_TRAIN = """\
import argparse, json, os, sys, time
p = argparse.ArgumentParser()
for a in ("--root", "--trainer", "--dataset-config-file", "--config-file", "--output-dir"):
    p.add_argument(a)
p.add_argument("--seed", type=int)
args, opts = p.parse_known_args()
os.makedirs(args.output_dir, exist_ok=True)
with open(os.path.join(args.output_dir, "env.json"), "w") as f:
    json.dump({k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}, f)
time.sleep(float(os.environ.get("FAKE_SLEEP", "0.5")))
if args.seed == 2:
    print("RuntimeError: boom", file=sys.stderr)
    sys.exit(3)
with open(os.path.join(args.output_dir, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"split": "test", "epoch": 1, "final": True, "metrics": {"accuracy": 1.0}}) + "\\n")
"""


def test_jobs_hand_out_gpus_or_split_threads_and_keep_the_failure_rules(tmp_path, capsys, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    base = ["--trainer", "Fake", "--dataset-config-file", SYN_CFG, "--config-file", COOP_CFG, "--seeds", "1", "2", "3",
            "--shots", "1", "2", "--train-script", str(script)]
    root = tmp_path / "gpu"
    assert sweep.main([*base, "--output-root", str(root), "--jobs", "2", "--gpus", "0,1"]) == 1
    out = capsys.readouterr().out
    assert "2 runs at once on GPU 0, 1, one each" in out
    envs = [json.load(open(p)) for p in glob.glob(str(root / "**" / "env.json"), recursive=True)]
    assert len(envs) == 6 and {e["CUDA_VISIBLE_DEVICES"] for e in envs} <= {"0", "1"}
    assert len([l for l in out.splitlines() if ": done in " in l]) == 4
    assert len([l for l in out.splitlines() if "FAILED with exit code 3" in l]) == 2
    assert "ran 6, skipped 0, failed 2, refused 0" in out
    fails = [json.loads(l) for l in (root / "sweep_failures.jsonl").read_text().splitlines()]
    assert sorted(os.path.basename(f["output_dir"]) for f in fails) == ["seed2", "seed2"]
    assert all(f["stderr_tail"][-1] == "RuntimeError: boom" for f in fails)
    # second pass: the same skip rules
    assert sweep.main([*base, "--output-root", str(root), "--jobs", "2", "--gpus", "0,1"]) == 1
    assert "ran 2, skipped 4, failed 2" in capsys.readouterr().out

    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    root = tmp_path / "cpu"
    assert sweep.main([*base, "--output-root", str(root), "--jobs", "2", "--gpus", "none"]) == 1
    assert "2 runs at once on CPU, 4 thread(s) each" in capsys.readouterr().out
    envs = [json.load(open(p)) for p in glob.glob(str(root / "**" / "env.json"), recursive=True)]
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["4"] * 6 and all(e["CUDA_VISIBLE_DEVICES"] is None for e in envs)

    assert sweep.main([*base, "--output-root", str(root), "--jobs", "3", "--gpus", "0,1"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --jobs 3 needs 3 GPUs, one per run, but 2 are visible (0,1): "
                                               "lower --jobs or give --gpus")


def test_sigterm_to_the_sweep_stops_its_running_runs(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    root = tmp_path / "out"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "sweep.py"), "--trainer", "Fake", "--dataset-config-file",
           SYN_CFG, "--config-file", COOP_CFG, "--seeds", "1", "3", "4", "--train-script", str(script),
           "--output-root", str(root), "--jobs", "2", "--gpus", "none"]
    proc = subprocess.Popen(cmd, env={**os.environ, "FAKE_SLEEP": "600"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    end = time.time() + GUARD
    while len(glob.glob(str(root / "**" / "env.json"), recursive=True)) < 2:  # two runs started
        assert proc.poll() is None and time.time() < end
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=GUARD)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == ("sweep stopped: 2 running run(s) were stopped at their last committed "
                                            "epoch; rerun the same sweep to resume them")
    assert len(glob.glob(str(root / "**" / "env.json"), recursive=True)) == 2  # the third never started
    assert "done in" not in out and not (root / "sweep_failures.jsonl").exists()


def test_jobs_2_finishes_the_same_runs_with_the_same_metrics(data_root, tmp_path, reference, capsys):
    root = tmp_path / "jobs2"
    assert sweep.main(sweep_argv(data_root, root, "--jobs", "2")) == 0
    out = capsys.readouterr().out
    assert len([l for l in out.splitlines() if ": done in " in l]) == 4
    assert "sweep done: 4 runs: ran 4, skipped 0, failed 0, refused 0" in out
    assert finals(root) == reference[1]


# ----------------------------------------------------------------------------- stop signals
def _wait_for(path: str, proc: subprocess.Popen) -> str:
    end = time.time() + GUARD
    while not os.path.exists(path):
        assert proc.poll() is None, f"exited with {proc.returncode} before pausing"
        assert time.time() < end, "hang guard"
        time.sleep(0.2)
    return open(path).read()


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGUSR1, 138), (signal.SIGUSR2, 140),
                                      (signal.SIGINT, 130)])
def test_cli_turns_stop_signals_into_one_line_and_128_plus_the_signal(monkeypatch, capsys, sig, code):
    import train

    def signalled(argv=None):
        try:  # as train.run does: the stop arrives in the loop and leaves carrying the trainer's last commit
            os.kill(os.getpid(), sig)
            time.sleep(60)  # the handler raises long before
        except KeyboardInterrupt as e:
            raise train.Interrupted({"dir": "out/run", "epoch": 3, "finished": False}) from e
        raise AssertionError("no signal")

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    monkeypatch.setattr(train, "main", signalled)
    # Ctrl-C as a terminal delivers it: Python's KeyboardInterrupt handler (a shell that starts pytest in the
    # background, e.g. `nohup ... &`, makes it inherit SIGINT ignored, and then no Ctrl-C reaches train.py)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert train.cli() == code
    finally:
        signal.signal(signal.SIGINT, inherited)
    how = "interrupted" if sig == signal.SIGINT else f"stopped by {signal.Signals(sig).name}"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"{how}: rerun the same command to resume the run in out/run from epoch 3 (the last saved epoch)"]
    assert {s: signal.getsignal(s) for s in before} == before  # the earlier handlers are back


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGUSR1, 138)])
def test_stop_signal_mid_epoch_then_rerun_equals_uninterrupted(data_root, tmp_path, reference, sig, code):
    ref_root, ref = reference
    args = sweep.build_parser().parse_args(sweep_argv(data_root, ref_root))
    run = next(r for r in sweep.plan(args) if r.output_dir.endswith(PAUSED))
    out = str(tmp_path / "run")
    cmd = [sys.executable, os.path.join(ROOT, "train.py")] + [out if a == run.output_dir else a for a in run.argv]
    marker = str(tmp_path / "paused")
    env = {**os.environ, "EMOLAB_TEST_PAUSE": f"run:{marker}"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pid = int(_wait_for(marker, proc).split()[0])
    assert pid == proc.pid
    proc.send_signal(sig)  # epoch 1 committed, epoch 2 at its second step
    _, err = proc.communicate(timeout=GUARD)
    assert proc.returncode == code, err[-2000:]
    assert err.strip().splitlines()[-1] == (f"stopped by {signal.Signals(sig).name}: rerun the same command to resume "
                                            f"the run in {out} from epoch 1 (the last saved epoch)")
    assert json.load(open(os.path.join(out, "run_state.json")))["epoch"] == 1
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=GUARD)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in open(os.path.join(out, "log.txt")).read()
    assert final_test(out) == ref[PAUSED_RUN]


# ----------------------------------------------------------------------------- submitit
def test_submitit_sweep_with_a_preempted_run_matches_uninterrupted_runs(data_root, tmp_path, reference):
    pytest.importorskip("submitit")
    root = tmp_path / "slurm"
    marker = str(tmp_path / "paused")
    env = {**os.environ, "EMOLAB_TEST_PAUSE": f"{PAUSED}:{marker}"}
    cmd = [sys.executable, os.path.join(ROOT, "tools", "sweep.py"),
           *sweep_argv(data_root, root, "--launcher", "submitit-local", "--cpus-per-run", "1", "--gpus-per-run", "0",
                       "--time", "60", "--wait")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    train_pid, job_pid = map(int, _wait_for(marker, proc).split())
    os.kill(job_pid, signal.SIGUSR2)  # submitit's preemption signal, to the job (SLURM: --signal=USR2@...)
    out, _ = proc.communicate(timeout=GUARD)
    assert proc.returncode == 0, out[-3000:]
    assert "submitted 4 run(s) (submitit-local" in out and "ran 4, skipped 0, failed 0" in out
    assert finals(root) == reference[1]  # the preempted run included
    paused = root / "SyntheticEmotion" / "PausingCoOp" / PAUSED
    assert "resumed from" in (paused / "log.txt").read_text()
    logs = "".join(open(p).read() for p in glob.glob(str(root / "submitit" / "*_log.*")))
    assert f"stopped by SIGTERM: rerun the same command to resume the run in {paused} from epoch 1" in logs
    assert "preempted: train.py stopped with exit code 143" in logs

    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sweep.py"), *sweep_argv(data_root, root, "--status")],
                       capture_output=True, text=True, timeout=GUARD)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "status: 4 runs: 4 finished, 0 failed, 0 started, 0 pending"


def test_status_names_finished_failed_started_and_pending(tmp_path, capsys):
    base = ["--trainer", "Fake", "--dataset-config-file", SYN_CFG, "--config-file", COOP_CFG, "--seeds", "1", "2", "3",
            "4", "--output-root", str(tmp_path)]
    d = tmp_path / "SyntheticEmotion" / "Fake" / "tiny_synthetic_allshots" / "default"
    (d / "seed1").mkdir(parents=True)
    (d / "seed1" / "metrics.jsonl").write_text(json.dumps({"split": "test", "final": True, "metrics": {}}) + "\n")
    (d / "seed2").mkdir()
    (d / "seed2" / "run_state.json").write_text(json.dumps({"epoch": 3, "max_epoch": 10}))
    (tmp_path / "sweep_failures.jsonl").write_text(json.dumps({"output_dir": str(d / "seed3"), "exit_code": 1,
                                                                "time": "2026-01-01T00:00:00"}) + "\n")
    (tmp_path / "sweep_jobs.jsonl").write_text(json.dumps({"output_dir": str(d / "seed4"), "job_id": "77_3",
                                                             "launcher": "slurm", "time": "2026-01-01T00:00:00"}) + "\n")
    assert sweep.main([*base, "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"finished {d / 'seed1'}",
                     f"started  {d / 'seed2'}: epoch 3/10 committed",
                     f"failed   {d / 'seed3'}: exit code 1 at 2026-01-01T00:00:00, no epoch committed",
                     f"pending  {d / 'seed4'}: submitted (job 77_3, slurm)",
                     "status: 4 runs: 1 finished, 1 failed, 1 started, 1 pending"]


def test_slurm_dry_run_shows_the_job_array(tmp_path, capsys):
    pytest.importorskip("submitit")
    args = ["--trainer", "CoOp", "--dataset-config-file", SYN_CFG, "--config-file", COOP_CFG, "--seeds", "1", "2",
            "--shots", "1", "2", "4", "--output-root", str(tmp_path), "--launcher", "slurm", "--partition", "gpu",
            "--account", "proj", "--gpus-per-run", "1", "--cpus-per-run", "8", "--mem", "32", "--time", "90",
            "--array-parallelism", "3", "--sbatch", "qos=high", "--sbatch", "constraint=a100", "--dry-run"]
    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    assert "would submit 6 run(s) as one SLURM job array through submitit" in out
    script = [l.split("| ", 1)[1] for l in out.splitlines() if l.startswith("  | ")]
    for line in ["#SBATCH --array=0-5%3", "#SBATCH --partition=gpu", "#SBATCH --account=proj",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --time=90",
                 "#SBATCH --qos=high", "#SBATCH --constraint=a100", "#SBATCH --signal=USR2@120"]:
        assert line in script, line
    assert not (tmp_path / "submitit").exists()  # nothing submitted
    assert sweep.main([*args[:-1], "--sbatch", "=x", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: bad --sbatch '=x'")


# ----------------------------------------------------------------------------- two nodes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(data_root, out):
    return ["--root", data_root, "--seed", "1", "--trainer", "CoOp", "--output-dir", str(out), "--config-file", COOP_CFG,
            "--dataset-config-file", SYN_CFG, *TINY, "OPTIM.MAX_EPOCH", "3", "TRAIN.DIST_TIMEOUT", "20"]


def _torchrun(nnodes: int, node_rank: int, nproc: int, port: int, args, env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node-rank", str(node_rank),
           "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(port),
           os.path.join(ROOT, "train.py"), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_node(launcher: subprocess.Popen) -> None:
    """SIGKILL a "node": its torchrun launcher and every process under it (torchrun starts its workers
    in their own sessions, so the launcher's process group alone would leave them running)."""
    children: dict = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    tree, todo = [], [launcher.pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _two_nodes(args, env):
    port = _free_port()
    return [_torchrun(2, rank, 1, port, args, env) for rank in (0, 1)]


@pytest.fixture(scope="module")
def one_node(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_node") / "run"
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    p = _torchrun(1, 0, 2, _free_port(), _train_args(data_root, out), env)
    log, _ = p.communicate(timeout=GUARD)
    assert p.returncode == 0, log[-3000:]
    return final_test(str(out))


@pytest.mark.parametrize("killed", [0, 1])
def test_two_nodes_match_one_node_and_resume_after_a_node_is_killed(data_root, tmp_path, one_node, killed):
    launched = []
    try:
        out = tmp_path / "run"
        env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1",
               # the killed node's worker waits inside epoch 2's validation, so the kill lands after epoch 1's
               # commit and before the run can finish
               "EMOLAB_KILL_AT": "eval:val@2", "EMOLAB_KILL_MODE": "hang", "EMOLAB_KILL_RANK": str(killed)}
        nodes = _two_nodes(_train_args(data_root, out), env)
        launched += nodes
        state = out / "run_state.json"
        end = time.time() + GUARD
        while not (state.exists() and json.loads(state.read_text() or "{}").get("epoch", 0) >= 1):
            assert all(n.poll() is None for n in nodes) and time.time() < end
            time.sleep(0.2)
        _kill_node(nodes[killed])  # the whole node: launcher and worker
        other = nodes[1 - killed]
        log, _ = other.communicate(timeout=GUARD)  # its worker stops within TRAIN.DIST_TIMEOUT
        assert other.returncode != 0
        nodes[killed].wait(timeout=GUARD)
        assert json.loads(state.read_text())["epoch"] in (1, 2)
        assert not any(r.get("final") for r in read_metrics(str(out)))

        env = {k: v for k, v in env.items() if not k.startswith("EMOLAB_KILL")}
        nodes = _two_nodes(_train_args(data_root, out), env)
        launched += nodes
        logs = [n.communicate(timeout=GUARD)[0] for n in nodes]
        assert [n.returncode for n in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
        text = (out / "log.txt").read_text()
        assert "resumed from" in text and "distributed: world size 2" in text
        assert text.count("evaluate on the *test* set") == 1  # one final test, written once
        files = set(os.listdir(out / "prompt_learner"))  # written once, by rank 0: no second set, no leftovers
        assert {"checkpoint", "model-best.pth.tar", "model.pth.tar-3"} <= files
        assert all(f in ("checkpoint", "model-best.pth.tar") or f.startswith("model.pth.tar-") and ".tmp" not in f
                   for f in files), files
        assert sum(1 for r in read_metrics(str(out)) if r.get("final")) == 1
        got = final_test(str(out))
        assert got.keys() == one_node.keys()
        for k in got:
            assert got[k] == pytest.approx(one_node[k], abs=1e-6), k
    finally:  # no launcher or worker outlives the test
        for n in launched:
            if n.poll() is None:
                _kill_node(n)


def test_parse_results_refuses_a_setting_whose_seeds_have_different_configs(tmp_path, capsys):
    from tools import parse_results

    setting = tmp_path / "SyntheticEmotion" / "CoOp" / "tiny_synthetic_2shots" / "default"
    for seed, epochs, workers in ((1, 10, 0), (2, 3, 4), (3, 3, 0)):
        d = setting / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text(json.dumps({"split": "test", "final": True, "metrics": {"accuracy": 50.0}}) + "\n")
        (d / "config.yaml").write_text(f"SEED: {seed}\nOUTPUT_DIR: {d}\nOPTIM:\n  MAX_EPOCH: {epochs}\n"
                                       f"DATALOADER:\n  NUM_WORKERS: {workers}\n")
    assert parse_results.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {setting}: its runs have different configs (OPTIM.MAX_EPOCH 10 in seed1 vs 3 in seed2, seed3): "
                   "rerun them with one config (tools/sweep.py refuses or, with --rerun-changed, restarts the runs "
                   "whose folder holds another config)"]
    (setting / "seed1" / "config.yaml").write_text("SEED: 1\nOPTIM:\n  MAX_EPOCH: 3\n")  # seed, workers, folder: no matter
    assert parse_results.main([str(tmp_path)]) == 0
    assert "50.00 ± 0.00" in capsys.readouterr().out
