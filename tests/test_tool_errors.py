"""The tools held to train.py's standard: bad input is one ``error: ...`` line naming the culprit, exit
status 2, no traceback, and no file the tool did not write is replaced (unless ``--force``)."""
from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from tools import benchmark, convert_coop_checkpoint, parse_results, plot_results


def _run(tmp, method="CoOp", shots=4, seeds=(1, 2), metrics=None):
    for seed in seeds:
        d = tmp / "runs" / "SyntheticEmotion" / method / f"tiny_{shots}shots" / "default" / f"seed{seed}"
        d.mkdir(parents=True)
        m = metrics or {"accuracy": 50.0 + seed}
        (d / "metrics.jsonl").write_text(json.dumps({"split": "test", "epoch": 1, "final": True, "metrics": m}) + "\n")
        (d / "config.yaml").write_text("DATASET:\n  SUBSAMPLE_CLASSES: all\n")
    return str(tmp / "runs")


def _one_error_line(capsys, *words):
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_plot_results_out_is_a_file(tmp_path, capsys):
    runs = _run(tmp_path)
    f = tmp_path / "not_a_folder"
    f.write_text("mine")
    assert plot_results.main([runs, "--out", str(f)]) == 2
    _one_error_line(capsys, str(f), "is a file")
    assert f.read_text() == "mine"


def test_plot_results_full_disk(tmp_path, capsys, monkeypatch):
    import matplotlib.figure

    runs = _run(tmp_path)

    def full(self, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    figs = tmp_path / "figs"
    assert plot_results.main([runs, "--out", str(figs)]) == 0  # an earlier figure
    before = (figs / "fewshot.png").read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    assert plot_results.main([runs, "--out", str(figs)]) == 2
    _one_error_line(capsys, "fewshot.png", "no space left on device")
    assert (figs / "fewshot.png").read_bytes() == before  # intact
    assert sorted(os.listdir(figs)) == ["fewshot.png"]  # no temporary left


def test_plot_results_unknown_metric_writes_nothing(tmp_path, capsys):
    runs = _run(tmp_path)
    assert plot_results.main([runs, "--metric", "accuracyy", "--out", str(tmp_path / "figs")]) == 2
    _one_error_line(capsys, "'accuracyy'", "accuracy")
    assert not (tmp_path / "figs" / "fewshot.png").exists()


def test_plot_results_keeps_a_figure_it_did_not_write(tmp_path, capsys):
    from PIL import Image

    runs = _run(tmp_path)
    figs = tmp_path / "figs"
    figs.mkdir()
    Image.new("RGB", (4, 4)).save(figs / "fewshot.png")  # the user's own picture
    before = (figs / "fewshot.png").read_bytes()
    assert plot_results.main([runs, "--out", str(figs)]) == 2
    _one_error_line(capsys, "fewshot.png", "--force")
    assert (figs / "fewshot.png").read_bytes() == before
    assert plot_results.main([runs, "--out", str(figs), "--force"]) == 0
    capsys.readouterr()
    assert plot_results.main([runs, "--out", str(figs)]) == 0  # its own figure: replaced without --force


def test_parse_results_csv_is_a_folder(tmp_path, capsys):
    runs = _run(tmp_path)
    assert parse_results.main([runs, "--csv", str(tmp_path)]) == 2
    _one_error_line(capsys, str(tmp_path), "folder")


def test_parse_results_keeps_a_csv_it_did_not_write(tmp_path, capsys):
    runs = _run(tmp_path)
    mine = tmp_path / "budget.csv"
    mine.write_text("a,b\n1,2\n")
    assert parse_results.main([runs, "--csv", str(mine)]) == 2
    _one_error_line(capsys, str(mine), "--force")
    assert mine.read_text() == "a,b\n1,2\n"
    ours = tmp_path / "table.csv"
    assert parse_results.main([runs, "--csv", str(ours)]) == 0
    assert parse_results.main([runs, "--csv", str(ours)]) == 0  # its own file: rewritten


def test_parse_results_nan_metric_is_named(tmp_path, capsys):
    runs = _run(tmp_path, metrics={"accuracy": float("nan"), "macro_f1": 3.0})
    assert parse_results.main([runs]) == 2
    _one_error_line(capsys, "'accuracy'", "nan", "seed1")
    assert parse_results.main([runs, "--metric", "macro_f1"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "3.00 ± 0.00" in out


def test_parse_results_text_metric(tmp_path, capsys):
    runs = _run(tmp_path, metrics={"accuracy": 60.0, "best_model": "model.pth.tar-3"})
    assert parse_results.main([runs, "--metric", "best_model"]) == 2
    _one_error_line(capsys, "'best_model'", "not a number")
    assert parse_results.main([runs]) == 0
    err = capsys.readouterr().err
    assert "best_model" in err  # said, not silently dropped


def _coop_run(tmp_path):
    d = tmp_path / "run" / "prompt_learner"
    d.mkdir(parents=True)
    state = {"context.ctx": torch.randn(1, 4, 8)}
    torch.save({"state_dict": state, "epoch": 2, "optimizer": None, "scheduler": None, "val_result": None},
               d / "model.pth.tar-2")
    (d / "checkpoint").write_text("model.pth.tar-2\n")
    return str(tmp_path / "run")


def test_convert_never_overwrites_an_unrelated_file(tmp_path, capsys):
    run = _coop_run(tmp_path)
    target = tmp_path / "x.pth.tar"
    target.write_bytes(b"the user's own file")
    assert convert_coop_checkpoint.main([run, str(target)]) == 2
    _one_error_line(capsys, str(target), "--force")
    assert target.read_bytes() == b"the user's own file"
    assert convert_coop_checkpoint.main([run, str(target), "--force"]) == 0
    assert torch.load(target, weights_only=True)["state_dict"]["ctx"].shape == (4, 8)
    assert convert_coop_checkpoint.main([run, str(target)]) == 0  # its own output: replaced


def test_benchmark_refuses_a_json_it_did_not_write_before_measuring(tmp_path, capsys, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text('{"mine": 1}')
    monkeypatch.setattr(benchmark, "measure", lambda *a, **k: pytest.fail("measured before checking --json"))
    assert benchmark.main(["--trainer", "CoOp", "--config-file", "x.yaml", "--json", str(target)]) == 2
    _one_error_line(capsys, str(target), "--force")
    assert target.read_text() == '{"mine": 1}'


def test_build_anchors_refuses_an_unrelated_output(tmp_path, capsys):
    from tools import build_anchors

    target = tmp_path / "anchors.pt"
    target.write_bytes(b"not an anchor file")
    (tmp_path / "imgs" / "happy").mkdir(parents=True)
    assert build_anchors.main(["--image-dir", str(tmp_path / "imgs"), "--output", str(target)]) == 2
    _one_error_line(capsys, str(target), "--force")
    assert target.read_bytes() == b"not an anchor file"


def test_tool_os_errors_are_one_line(tmp_path, capsys):
    """An OSError inside any tool (here: make_synthetic under a file) is one line, not a traceback."""
    from tools import make_synthetic

    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = make_synthetic.main(["--root", str(blocker / "sub"), "--n-train", "1", "--n-val", "1", "--n-test", "1"])
    assert code == 2
    _one_error_line(capsys, str(blocker))
