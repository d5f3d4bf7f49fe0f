"""tools/benchmark.py produces its table and JSON (a format check, not a speed test)."""
from __future__ import annotations

import json
import os

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
    assert res["environment"]["torch"]
    assert "| CoCoOp train, reference cocoop-loop |" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(ROOT, "tools", "benchmark.py"))
