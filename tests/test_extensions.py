"""Methods outside the tree: the README's trainer template, --import / EMOLAB_IMPORT, the Python API."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap


from conftest import ROOT, SMALL_DATA, final_test, run_cli

README = os.path.join(ROOT, "docs", "EXTENDING.md")  # the trainer template and the Python API


def readme_section(title: str) -> str:
    text = open(README, encoding="utf-8").read()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end > 0 else None]


def code_blocks(section: str, lang: str):
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def test_readme_trainer_template_trains_out_of_tree_from_the_cli(tmp_path, data_root):
    """The "Adding a trainer" code, saved as written in a folder outside the repository, trains one
    epoch with the README's command (plus small data) and writes its plots."""
    section = readme_section("Adding a trainer")
    code = code_blocks(section, "python")[0]
    first = code.splitlines()[0]
    module = re.match(r"# (\w+)\.py", first).group(1)
    (tmp_path / f"{module}.py").write_text(code)
    command = [c for c in code_blocks(section, "bash") if "train.py" in c][0]
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:2] == ["python", "train.py"] and "--import" in argv
    out = tmp_path / "run"
    split = next(i for i, a in enumerate(argv) if re.match(r"^[A-Z_]+\.", a))  # flags | KEY VALUE opts
    args = [sys.executable, os.path.join(ROOT, "train.py"), *argv[2:split], "--root", data_root, "--output-dir",
            str(out), "--seed", "1", *argv[split:], *SMALL_DATA, "OPTIM.MAX_EPOCH", "1"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "accuracy" in final_test(str(out))
    assert (out / "plots" / "training_curves.png").is_file() and (out / "plots" / "confusion_matrix_test.png").is_file()
    # the frozen CLIP never trains and is not saved: only the registered head is
    assert sorted(p.name for p in out.iterdir() if (p / "checkpoint").exists()) == ["head"]


def test_import_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken_methods.py").write_text("import torch\nraise RuntimeError('half-written method')\n")
    assert run_cli(["--import", "broken_methods", "--no-train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot import extension module 'broken_methods'" in err
    assert "RuntimeError: half-written method" in err and "broken_methods.py, line 2" in err

    monkeypatch.setenv("EMOLAB_IMPORT", "no_such_module")
    assert run_cli(["--no-train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'no_such_module'" in err and "ModuleNotFoundError" in err


def test_extension_redefining_a_config_node_is_refused(tmp_path, monkeypatch, capsys):
    from configs.registry import CONFIG_EXTENSIONS

    monkeypatch.chdir(tmp_path)
    (tmp_path / "clobber_methods.py").write_text(textwrap.dedent("""
        from yacs.config import CfgNode as CN
        from configs.registry import register_config

        @register_config
        def add_clobber_config(cfg):
            cfg.TRAINER.COOP = CN()   # replaces CoOp's node
            cfg.TRAINER.COOP.N_CTX = 4
    """))
    try:
        assert run_cli(["--import", "clobber_methods", "--no-train"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "config extension clobber_methods.add_clobber_config redefines the existing config node TRAINER.COOP" in err
    finally:
        CONFIG_EXTENSIONS._items.pop("add_clobber_config", None)
        sys.modules.pop("clobber_methods", None)


def test_feature_cache_needs_a_trainer_that_supports_it(tmp_path, data_root, capsys):
    assert run_cli(["--root", data_root, "--trainer", "EmoCoOp", "--output-dir", str(tmp_path / "x"), "--no-train",
                    "--config-file", os.path.join(ROOT, "configs/trainers/EmoCoOp/tiny_synthetic.yaml"),
                    *SMALL_DATA, "CACHE.FEATURES", "on"]) == 2
    err = capsys.readouterr().err
    assert "CACHE.FEATURES on: trainer EmoCoOp does not support the feature cache" in err and err.count("\n") == 1


def test_python_api_example_from_the_readme(tmp_path, monkeypatch, capsys):
    """The README's notebook example, run as written in a fresh folder (it generates its data there)."""
    code = code_blocks(readme_section("From Python or a notebook"), "python")[0]
    monkeypatch.chdir(tmp_path)
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
    import logging

    for h in list(logging.getLogger().handlers):  # as in a fresh kernel: no EmoLab log handler yet
        if getattr(h, "_emolab", False):
            logging.getLogger().removeHandler(h)
    namespace: dict = {}
    try:
        exec(compile(code, "README-python-example", "exec"), namespace)
    finally:
        for h in list(logging.getLogger().handlers):
            if getattr(h, "_emolab", False):
                logging.getLogger().removeHandler(h)
                h.close()
    out = capsys.readouterr().out
    assert "evaluate on the *test* set" in out and "* accuracy:" in out  # log output in the notebook
    results, preds = namespace["results"], namespace["predictions"]
    assert 0 <= results["accuracy"] <= 100
    assert len(preds) == 3 and set(preds[0]) == {"classname", "label", "probs"}
    assert abs(sum(preds[0]["probs"].values()) - 1) < 1e-4
    cfg_dir = namespace["cfg"].OUTPUT_DIR
    assert os.path.isfile(os.path.join(cfg_dir, "log.txt"))
