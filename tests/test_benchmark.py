"""tools/benchmark.py produces its table and JSON (a format check, not a speed test)."""
from __future__ import annotations

import json
import os

import pytest

from conftest import COCOOP_CFG, ROOT, SMALL_DATA


def test_benchmark_reference_and_json(tmp_path, data_root, capsys):
    from tools import benchmark

    out = tmp_path / "b.json"
    code = benchmark.main(["--trainer", "CoCoOp", "--config-file", COCOOP_CFG, "--root", data_root, "--batch-size", "4",
                           "--steps", "2", "--warmup", "1", "--ref-steps", "1", "--reference", "cocoop-loop", "coop-77",
                           "--json", str(out), *SMALL_DATA])
    assert code == 0
    res = json.loads(out.read_text())
    whats = [r["what"] for r in res["results"]]
    # coop-77 needs an image-independent context, so CoCoOp skips it
    assert whats == ["CoCoOp train", "CoCoOp train, reference cocoop-loop", "CoCoOp eval"]
    for r in res["results"]:
        assert r["images_per_s"] > 0 and 0 <= r["data_wait_share"] <= 1 and r["peak_mem_mb"] > 0
    assert all(r["saved_for_backward_mb"] > 0 for r in res["results"][:2])  # the two training steps
    assert res["environment"]["torch"]
    assert "| CoCoOp train, reference cocoop-loop |" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(ROOT, "tools", "benchmark.py"))


def test_saved_for_backward_counts_distinct_activation_storages():
    """Hand-computed: y = relu(x @ w) saves x (w excluded as a weight) and relu's output; x is
    counted once although both ops could see it."""
    import torch

    from tools.benchmark import saved_for_backward_mb

    lin = torch.nn.Linear(256, 512, bias=False)
    x = torch.randn(1024, 256, requires_grad=True)

    def step(batch):
        torch.relu(lin(batch["x"])).sum().backward()

    mb = saved_for_backward_mb(step, {"x": x}, exclude=lin)
    assert mb == (1024 * 256 * 4 + 1024 * 512 * 4) / 2**20  # x, relu output (w: a parameter, not counted)
    with_weights = saved_for_backward_mb(step, {"x": x})
    assert with_weights == mb + 256 * 512 * 4 / 2**20


def test_benchmark_scale_modes_run_and_write_their_rows(tmp_path, data_root):
    """Each scale mode at toy sizes (format and invariants, not speed): the evaluation at two class
    counts, the start-up at two folder sizes, the QuickGELU step, with a saved-for-backward column."""
    from conftest import COOP_CFG
    from tools import benchmark

    common = ["--root", data_root, "--repeats", "1", "--threads", "1"]
    out = tmp_path / "eval.json"
    assert benchmark.main(["--trainer", "CoOp", "--config-file", COOP_CFG, "--eval-classes", "8", "16", "--eval-images",
                           "64", "--test-batch-size", "16", "--json", str(out), *common, *SMALL_DATA]) == 0
    rows = json.loads(out.read_text())["results"]
    whole = [r for r in rows if "part" not in r]
    assert sorted((r["classes"], r["reuse"]) for r in whole) == [(8, False), (8, True), (16, False), (16, True)]
    assert all(r["images"] == 64 and r["images_per_s"] > 0 for r in whole)
    parts = {(r["classes"], r["part"]): r for r in rows if "part" in r}  # cached features: where the time goes
    assert sorted(parts) == [(c, p) for c in (8, 16) for p in ("batches", "loader", "logits", "text")]
    for (c, part), r in parts.items():
        once = next(w for w in whole if w["classes"] == c and w["reuse"])
        assert r["seconds"] > 0 and r["share_of_evaluation"] == pytest.approx(r["seconds"] / once["seconds"])
    out = tmp_path / "decoded.json"
    assert benchmark.main(["--trainer", "CoOp", "--config-file", COOP_CFG, "--eval-classes", "8", "--eval-source",
                           "decoded", "--eval-images", "40", "--test-batch-size", "16", "--json", str(out), *common,
                           *SMALL_DATA]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["reuse"] for r in rows] == [False, True] and rows[0]["images"] >= 40
    out = tmp_path / "startup.json"
    assert benchmark.main(["--trainer", "CoOp", "--config-file", COOP_CFG, "--startup", "16", "48", "--json", str(out),
                           *common]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["images"] for r in rows] == [16, 48, 48] and rows[0]["warm_vs_smallest"] == 1.0
    assert "garbage collector not paused" in rows[2]["what"] and rows[2]["warm_s"] > 0
    assert not any(r["test_features_built_at_start"] for r in rows[:2])
    out = tmp_path / "gelu.json"
    assert benchmark.main(["--trainer", "CoCoOp", "--config-file", COCOOP_CFG, "--quickgelu", "--steps", "2",
                           "--batch-size", "4", "--json", str(out), *common, *SMALL_DATA]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["what"].split(", ", 1)[1] for r in rows] == ["QuickGELU, three ops (open_clip)", "FusedQuickGELU"]
    assert rows[1]["saved_for_backward_mb"] < rows[0]["saved_for_backward_mb"]  # one saved input instead of three


def test_benchmark_attention_layout_mode(tmp_path):
    """--layout: both layouts timed on one batch; their features differ only by rounding."""
    from tools import benchmark

    out = tmp_path / "layout.json"
    assert benchmark.main(["--trainer", "CoOp", "--config-file", "configs/trainers/CoOp/tiny_synthetic.yaml", "--layout",
                           "--layout-arch", "emolab-tiny-vit", "--batch-size", "2", "--repeats", "1", "--json",
                           str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["what"].split(", ")[-1] for r in rows] == ["batch-first (open_clip)", "sequence-first (OpenAI's layout)"]
    assert rows[0]["time_vs_batch_first"] == 1.0 and 0 <= rows[1]["max_abs_feature_diff"] < 1e-4


def test_benchmark_replaces_its_own_json_but_no_other_file(tmp_path, data_root, capsys):
    """--json: a file this tool wrote (with its load average) is replaced; any other file stops the run first."""
    from tools import benchmark

    out = tmp_path / "layout.json"
    argv = ["--trainer", "CoOp", "--config-file", "configs/trainers/CoOp/tiny_synthetic.yaml", "--layout",
            "--layout-arch", "emolab-tiny-vit", "--batch-size", "2", "--repeats", "1", "--threads", "1",
            "--json", str(out)]
    assert benchmark.main(argv) == 0
    first = json.loads(out.read_text())
    assert set(first) == {"args", "environment", "load", "results"}
    assert benchmark.main(argv) == 0  # its own file: replaced
    other = tmp_path / "other.json"
    other.write_text('{"mine": 1}')
    capsys.readouterr()
    assert benchmark.main([*argv[:-1], str(other)]) != 0
    assert "other.json" in capsys.readouterr().err and json.loads(other.read_text()) == {"mine": 1}


def test_benchmark_layout_as_a_script_takes_project_and_openai_names(tmp_path):
    """Run as a script (a fresh process, nothing registered yet): the project's architecture names
    work, and an unknown name is one line with exit 2."""
    import subprocess
    import sys

    base = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--trainer", "CoOp", "--config-file",
            "configs/trainers/CoOp/tiny_synthetic.yaml", "--layout", "--batch-size", "1", "--repeats", "1"]
    ok = subprocess.run([*base, "--layout-arch", "emolab-tiny-vit"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "emolab-tiny-vit encode_image, batch 1, sequence-first" in ok.stdout
    bad = subprocess.run([*base, "--layout-arch", "ViT-Q/99"], cwd=ROOT, capture_output=True, text=True)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: unknown CLIP architecture 'ViT-Q/99'")
