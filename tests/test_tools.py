"""tools/parse_results.py and tools/sweep.py on fake run folders and a fake train script."""
import csv
import json
import math
import os
import shlex
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy import stats

from tools import parse_results, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_run(path, test_metrics, final=True, val_metrics=None):
    os.makedirs(path, exist_ok=True)
    recs = [{"split": "val", "epoch": 1, "final": False, "metrics": val_metrics or {"accuracy": 1.0}, "time": "t"}]
    if test_metrics is not None:
        recs.append({"split": "test", "epoch": 2, "final": final, "metrics": test_metrics, "time": "t"})
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs))


def expected(values):
    v = np.asarray(values, dtype=float)
    n = len(v)
    std = v.std(ddof=1) if n > 1 else 0.0
    ci = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else 0.0
    return v.mean(), std, ci


COOP_LOG = """\
Loading trainer: CoOp
=> result
* total: 100
* correct: 10
* accuracy: 10.0%
* error: 90.0%
Finish training
=> result
* total: 1,000
* correct: {c}
* accuracy: {acc}%
* error: {err}%
* macro_f1: {f1}%
=> per-class result
* class: 0 (a)\ttotal: 500\tcorrect: 1\tacc: 99.0%
* average: 99.0%
Elapsed: 0:01:00
"""


@pytest.fixture
def runs_tree(tmp_path):
    base = tmp_path / "output" / "SyntheticEmotion" / "CoOp"
    a = base / "tiny_1shots" / "nctx16_cscFalse_ctpend"
    accs, f1s = [70.0, 72.5, 68.25], [60.1, 61.7, 59.0]
    for seed, acc, f1 in zip([1, 2, 3], accs, f1s):
        write_run(str(a / f"seed{seed}"), {"accuracy": acc, "error": 100 - acc, "macro_f1": f1,
                                            **({"extra": 1.0} if seed == 1 else {})},
                  val_metrics={"accuracy": acc - 10})
    write_run(str(a / "seed4"), None)  # unfinished: only a val record
    write_run(str(base / "tiny_10shots" / "nctx16_cscFalse_ctpend" / "seed1"), {"accuracy": 80.0, "macro_f1": 75.0})
    coop = tmp_path / "coop_runs" / "rn50_16shots" / "nctx16_cscFalse_ctpend"
    for seed, (c, f1) in enumerate([(713, 65.2), (701, 64.0)], 1):
        os.makedirs(coop / f"seed{seed}")
        (coop / f"seed{seed}" / "log.txt").write_text(
            COOP_LOG.format(c=c, acc=c / 10, err=100 - c / 10, f1=f1))
    return tmp_path, accs, f1s


def table_rows(text):
    lines = [l for l in text.strip().splitlines() if l.startswith("|")]
    return [[c.strip() for c in l.strip("|").split("|")] for l in lines]


def test_parse_results_markdown_and_csv(runs_tree, capsys):
    tmp, accs, f1s = runs_tree
    out_csv = tmp / "res.csv"
    assert parse_results.main([str(tmp / "output"), str(tmp / "coop_runs"), "--csv", str(out_csv)]) == 0
    captured = capsys.readouterr()
    rows = table_rows(captured.out)
    # settings as columns (method, config, shots, tag), the std's ddof in the header
    # (a dataset column because the two folders are read as two datasets)
    assert rows[0] == ["dataset", "method", "config", "shots", "tag", "n", "accuracy (mean ± std, ddof=1)",
                       "accuracy ci95", "error (mean ± std, ddof=1)", "error ci95", "macro_f1 (mean ± std, ddof=1)",
                       "macro_f1 ci95"]
    rows = [r[1:] for r in rows]
    body = {(r[0], r[2]): r for r in rows[2:]}
    m, s, ci = expected(accs)
    assert body[("CoOp", "1")][:6] == ["CoOp", "tiny", "1", "nctx16_cscFalse_ctpend", "3", f"{m:.2f} ± {s:.2f}"]
    assert body[("CoOp", "1")][6] == f"{ci:.2f}"
    # n=1: no meaningful CI; no 'error' metric in that run
    assert body[("CoOp", "10")][4:9] == ["1", "80.00 ± 0.00", "n<3", "-", "-"]
    assert body[("coop_runs", "16")][1:5] == ["rn50", "16", "nctx16_cscFalse_ctpend", "2"]
    assert "warning: 2 of 3 settings have fewer than 3 runs" in captured.err
    # natural order: 1shots before 10shots
    assert [r[2] for r in rows[2:]].index("1") < [r[2] for r in rows[2:]].index("10")
    a = os.path.join(str(tmp / "output"), "SyntheticEmotion", "CoOp", "tiny_1shots", "nctx16_cscFalse_ctpend")
    ten = a.replace("tiny_1shots", "tiny_10shots")

    with open(out_csv) as f:
        recs = {r["setting"]: r for r in csv.DictReader(f)}
    assert list(next(iter(recs.values())))[:10] == ["setting", "dataset", "method", "config", "shots", "tag", "n",
                                                    "accuracy_mean", "accuracy_std", "accuracy_ci95"]
    assert recs[a]["method"] == "CoOp" and recs[a]["shots"] == "1" and recs[a]["dataset"] == "SyntheticEmotion"
    for metric, values in (("accuracy", accs), ("macro_f1", f1s), ("error", [100 - x for x in accs])):
        m, s, ci = expected(values)
        assert float(recs[a][f"{metric}_mean"]) == pytest.approx(m, abs=1e-6)
        assert float(recs[a][f"{metric}_std"]) == pytest.approx(s, abs=1e-6)
        assert float(recs[a][f"{metric}_ci95"]) == pytest.approx(ci, abs=1e-6)
    assert float(recs[ten]["accuracy_std"]) == 0.0 and recs[ten]["error_mean"] == ""

    coop = os.path.join(str(tmp / "coop_runs"), "rn50_16shots", "nctx16_cscFalse_ctpend")
    m, s, ci = expected([71.3, 70.1])
    assert recs[coop]["n"] == "2"
    assert float(recs[coop]["accuracy_mean"]) == pytest.approx(m, abs=1e-6)
    assert float(recs[coop]["accuracy_ci95"]) == pytest.approx(ci, abs=1e-6)
    assert float(recs[coop]["macro_f1_mean"]) == pytest.approx(64.6, abs=1e-6)


def test_parse_results_metric_selection_and_split(runs_tree, capsys):
    tmp, accs, _ = runs_tree
    assert parse_results.main([str(tmp / "output"), "--metric", "macro_f1"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows[0] == ["method", "config", "shots", "tag", "n", "macro_f1 (mean ± std, ddof=1)", "macro_f1 ci95"]
    assert parse_results.main([str(tmp / "output"), "--split", "val", "--metric", "accuracy"]) == 0
    rows = table_rows(capsys.readouterr().out)
    m, s, _ = expected([x - 10 for x in accs])
    assert rows[2][5] == f"{m:.2f} ± {s:.2f}"


def test_parse_results_pivot(runs_tree, capsys):
    tmp, accs, _ = runs_tree
    assert parse_results.main([str(tmp / "output"), "--metric", "accuracy", "--pivot"]) == 0
    rows = table_rows(capsys.readouterr().out)
    m, s, _ = expected(accs)
    assert rows[0] == ["accuracy (mean ± std, ddof=1)", "1 shots", "10 shots"]
    assert rows[2] == ["CoOp", f"{m:.2f} ± {s:.2f} (n=3)", "80.00 ± 0.00 (n=1)"]


def test_parse_results_errors(tmp_path, runs_tree, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert parse_results.main([str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no finished runs") and err.count("\n") == 1
    assert parse_results.main([str(tmp_path / "output"), "--metric", "acuracy"]) == 2
    assert "did you mean 'accuracy'" in capsys.readouterr().err
    r = subprocess.run([sys.executable, "tools/parse_results.py", str(tmp_path / "nope")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ")


def test_t_table_fallback():
    for df in [1, 2, 5, 10, 29, 30, 31, 45, 200]:
        assert parse_results.t975_builtin(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-5)


# ----------------------------------------------------------------------------- sweep
@pytest.fixture
def configs(tmp_path):
    ds = tmp_path / "synthetic_emotion.yaml"
    ds.write_text("DATASET:\n  NAME: SyntheticEmotion\n  NUM_SHOTS: 4\n")
    cfg = tmp_path / "tiny_synthetic.yaml"
    cfg.write_text("OPTIM:\n  MAX_EPOCH: 1\n")
    return str(ds), str(cfg)


def dry_run(capsys, argv):
    assert sweep.main(["--dry-run", *argv]) == 0
    out = capsys.readouterr().out.splitlines()
    return [shlex.split(l) for l in out if l.startswith("  ")], out


def test_sweep_dry_run_coop(configs, tmp_path, capsys):
    ds, cfg = configs
    root = str(tmp_path / "out")
    cmds, out = dry_run(capsys, [
        "--trainer", "CoOp", "--dataset-config-file", ds, "--config-file", cfg, "--root", "data",
        "--seeds", "1", "2", "--shots", "1", "-1", "--grid", "TRAINER.COOP.N_CTX=4,16", "--output-root", root,
        "--python", "py", "--train-script", "train.py",
        "--", "TRAINER.COOP.CSC", "False", "TRAINER.COOP.CLASS_TOKEN_POSITION", "end"])
    assert len(cmds) == 8 and out[-1] == "dry run: 8 runs, 8 to run, 0 finished"
    first = os.path.join(root, "SyntheticEmotion", "CoOp", "tiny_synthetic_1shots", "nctx4_cscFalse_ctpend", "seed1")
    assert cmds[0] == ["py", "train.py", "--root", "data", "--seed", "1", "--trainer", "CoOp",
                       "--dataset-config-file", ds, "--config-file", cfg, "--output-dir", first,
                       "DATASET.NUM_SHOTS", "1", "TRAINER.COOP.N_CTX", "4",
                       "TRAINER.COOP.CSC", "False", "TRAINER.COOP.CLASS_TOKEN_POSITION", "end"]
    dirs = [c[c.index("--output-dir") + 1] for c in cmds]
    rel = [os.path.relpath(d, os.path.join(root, "SyntheticEmotion", "CoOp")) for d in dirs]
    assert rel == [
        "tiny_synthetic_1shots/nctx4_cscFalse_ctpend/seed1", "tiny_synthetic_1shots/nctx4_cscFalse_ctpend/seed2",
        "tiny_synthetic_1shots/nctx16_cscFalse_ctpend/seed1", "tiny_synthetic_1shots/nctx16_cscFalse_ctpend/seed2",
        "tiny_synthetic_allshots/nctx4_cscFalse_ctpend/seed1", "tiny_synthetic_allshots/nctx4_cscFalse_ctpend/seed2",
        "tiny_synthetic_allshots/nctx16_cscFalse_ctpend/seed1", "tiny_synthetic_allshots/nctx16_cscFalse_ctpend/seed2",
    ]
    assert cmds[-1][cmds[-1].index("DATASET.NUM_SHOTS") + 1] == "-1"
    assert any(l.startswith("[1/8] " + first) for l in out)


def test_sweep_tags(configs, tmp_path, capsys):
    ds, cfg = configs
    base = ["--dataset-config-file", ds, "--config-file", cfg, "--seeds", "0", "--output-root", "o"]
    cmds, _ = dry_run(capsys, ["--trainer", "ZSCLIP", *base, "--grid", "OPTIM.LR=0.1,0.01",
                               "--grid", "MODEL.BACKBONE.NAME=ViT-B/16"])
    tags = [c[c.index("--output-dir") + 1].split(os.sep)[-2] for c in cmds]
    assert tags == ["lr-0.1_name-ViT-B-16", "lr-0.01_name-ViT-B-16"]
    assert cmds[0][-4:] == ["OPTIM.LR", "0.1", "MODEL.BACKBONE.NAME", "ViT-B/16"]
    cmds, _ = dry_run(capsys, ["--trainer", "CoOp", *base])  # no CoOp opts given
    assert cmds[0][cmds[0].index("--output-dir") + 1] == os.path.join(
        "o", "SyntheticEmotion", "CoOp", "tiny_synthetic_allshots", "default", "seed0")
    cmds, _ = dry_run(capsys, ["--trainer", "X", *base, "--grid", "A.NAME=1", "--grid", "B.NAME=2"])
    assert cmds[0][cmds[0].index("--output-dir") + 1].split(os.sep)[-2] == "a.name-1_b.name-2"


def test_sweep_bad_arguments(configs, tmp_path, capsys):
    ds, cfg = configs
    base = ["--trainer", "CoOp", "--config-file", cfg, "--dry-run"]
    assert sweep.main([*base, "--dataset-config-file", str(tmp_path / "missing.yaml")]) == 2
    assert "error: cannot read dataset config" in capsys.readouterr().err
    assert sweep.main([*base, "--dataset-config-file", ds, "--grid", "OPTIM.LR"]) == 2
    assert "error: bad --grid" in capsys.readouterr().err
    assert sweep.main([*base, "--dataset-config-file", ds, "--", "OPTIM.LR"]) == 2
    assert "KEY VALUE" in capsys.readouterr().err


FAKE_TRAIN = textwrap.dedent("""\
    import argparse, json, os, sys
    p = argparse.ArgumentParser()
    for a in ("--root", "--trainer", "--dataset-config-file", "--config-file", "--output-dir"):
        p.add_argument(a)
    p.add_argument("--seed", type=int)
    args, opts = p.parse_known_args()
    if args.seed == 2:
        for i in range(30):
            print(f"trace line {i}", file=sys.stderr)
        print("RuntimeError: boom", file=sys.stderr)
        sys.exit(3)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"split": "test", "epoch": 1, "final": True,
                            "metrics": {"accuracy": 50.0 + args.seed}, "time": "t"}) + "\\n")
    with open(os.path.join(args.output_dir, "calls.txt"), "a") as f:
        f.write(" ".join(opts) + "\\n")
    """)


def test_sweep_runs_skips_and_records_failures(configs, tmp_path, capfd):
    ds, cfg = configs
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    root = tmp_path / "out"

    def argv(*seeds):
        return ["--trainer", "Fake", "--dataset-config-file", ds, "--config-file", cfg, "--seeds", *seeds,
                "--shots", "2", "--output-root", str(root), "--train-script", str(script), "--", "OPTIM.MAX_EPOCH", "1"]

    setting = root / "SyntheticEmotion" / "Fake" / "tiny_synthetic_2shots" / "default"
    write_run(str(setting / "seed3"), {"accuracy": 99.0})  # already finished
    assert sweep.main(argv("1", "2", "3")) == 1
    out = capfd.readouterr().out
    assert "ran 2, skipped 1, failed 1" in out
    assert (setting / "seed1" / "calls.txt").read_text() == "DATASET.NUM_SHOTS 2 OPTIM.MAX_EPOCH 1\n"
    assert not (setting / "seed3" / "calls.txt").exists()
    fails = [json.loads(l) for l in (root / "sweep_failures.jsonl").read_text().splitlines()]
    assert len(fails) == 1 and fails[0]["exit_code"] == 3
    assert fails[0]["output_dir"] == str(setting / "seed2") and "--seed 2" in fails[0]["cmd"]
    assert len(fails[0]["stderr_tail"]) == 20 and fails[0]["stderr_tail"][-1] == "RuntimeError: boom"
    assert fails[0]["time"]
    # second pass: finished runs skipped, the failing one retried and recorded again
    assert sweep.main(argv("1", "2", "3")) == 1
    assert "ran 1, skipped 2, failed 1" in capfd.readouterr().out
    assert len((root / "sweep_failures.jsonl").read_text().splitlines()) == 2
    # all good -> exit 0; results readable by parse_results
    assert sweep.main(argv("1", "3")) == 0
    capfd.readouterr()
    assert parse_results.main([str(root)]) == 0
    row = table_rows(capfd.readouterr().out)[2]
    assert row[:5] == ["Fake", "tiny_synthetic", "2", "default", "2"] and row[5].startswith("75.00 ± ")


def test_sweep_cli_subprocess(configs, tmp_path):
    ds, cfg = configs
    r = subprocess.run([sys.executable, "tools/sweep.py", "--trainer", "CoOp", "--dataset-config-file", ds,
                        "--config-file", cfg, "--seeds", "5", "--shots", "4", "--output-root", str(tmp_path),
                        "--dry-run"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.path.join(str(tmp_path), "SyntheticEmotion", "CoOp", "tiny_synthetic_4shots", "default", "seed5") in r.stdout
    assert "DATASET.NUM_SHOTS 4" in r.stdout
