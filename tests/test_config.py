"""Config merging: CoOp files load unchanged, merge order, and one-line errors for bad input."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from configs.config import merge_from_file, merge_from_list

from trainers import get_cfg
from utils.errors import ConfigError
from conftest import ROOT, SMALL_DATA, SYN_CFG


def test_coop_and_cocoop_config_files_load_unchanged():
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(ROOT, "configs/trainers/CoOp/rn50.yaml"))
    assert cfg.INPUT.SIZE == (224, 224)  # yaml string "(224, 224)" decoded as in yacs
    assert cfg.OPTIM.WARMUP_CONS_LR == pytest.approx(1e-5)  # "1e-5" is a string to PyYAML
    assert cfg.INPUT.TRANSFORMS == ("random_resized_crop", "random_flip", "normalize")
    assert cfg.MODEL.BACKBONE.NAME == "RN50"
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(ROOT, "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"))
    assert cfg.TRAINER.COCOOP.CTX_INIT == "a photo of a" and cfg.TRAINER.COCOOP.N_CTX == 4


def test_opts_override_files_and_keep_types():
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(ROOT, "configs/trainers/CoOp/rn50.yaml"))
    merge_from_list(cfg, ["OPTIM.LR", "0.5", "OPTIM.MAX_EPOCH", "3", "TRAINER.COOP.CTX_INIT", "a photo of a",
                          "DATASET.NUM_SHOTS", "0", "TRAINER.COOP.CSC", "True"])
    assert cfg.OPTIM.LR == 0.5 and cfg.OPTIM.MAX_EPOCH == 3 and isinstance(cfg.OPTIM.MAX_EPOCH, int)
    assert cfg.TRAINER.COOP.CTX_INIT == "a photo of a" and cfg.TRAINER.COOP.CSC is True
    assert cfg.DATASET.NUM_SHOTS == 0


@pytest.mark.parametrize(
    "opts, expected",
    [
        (["OPTIM.LRR", "0.1"], "unknown config key 'OPTIM.LRR' in command-line opts (did you mean 'OPTIM.LR'?)"),
        (["OPTIM.LR", "fast"], "config key 'OPTIM.LR' in command-line opts expects float, got str 'fast'"),
        (["OPTIM.MAX_EPOCH", "2.5"], "config key 'OPTIM.MAX_EPOCH' in command-line opts expects int, got float 2.5"),
        (["TRAINER.COOPP.N_CTX", "4"], "unknown config key 'TRAINER.COOPP' in command-line opts (did you mean 'TRAINER.COOP'?)"),
        (["OPTIM.LR"], "command-line opts must be KEY VALUE pairs; 'OPTIM.LR' has no value"),
    ],
)
def test_bad_opts_messages(opts, expected):
    cfg = get_cfg()
    with pytest.raises(ConfigError) as e:
        merge_from_list(cfg, opts)
    assert str(e.value) == expected


def test_bad_yaml_key_names_file_and_closest(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("OPTIM:\n  MAX_EPOCHS: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'OPTIM.MAX_EPOCHS' in .*bad.yaml \(did you mean 'OPTIM.MAX_EPOCH'\?\)"):
        merge_from_file(get_cfg(), str(bad))


def _cli(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trainer", "CoOP"], "error: unknown trainer 'CoOP' (did you mean 'CoOp'?)"),
        (["DATASET.NAME", "SyntheticEmotio"], "error: unknown dataset 'SyntheticEmotio' (did you mean 'SyntheticEmotion'?)"),
        (["OPTIM.NAMEE", "sgd"], "error: unknown config key 'OPTIM.NAMEE' in command-line opts (did you mean 'OPTIM.NAME'?)"),
        (["OPTIM.MAX_EPOCH", "ten"], "error: config key 'OPTIM.MAX_EPOCH' in command-line opts expects int, got str 'ten'"),
        (["--config-file", "missing.yaml"], "error: config file not found: missing.yaml"),
    ],
)
def test_cli_bad_input_one_line_exit_2(tmp_path, args, message):
    r = _cli(["--output-dir", str(tmp_path / "out"), *args], tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == message
    assert "Traceback" not in r.stderr + r.stdout


def test_cli_seed_zero_is_a_seed_and_config_saved(tmp_path, data_root):
    from conftest import COOP_CFG, run_cli

    out = tmp_path / "out"
    code = run_cli(["--root", data_root, "--seed", "0", "--output-dir", str(out), "--config-file", COOP_CFG,
                    "--dataset-config-file", SYN_CFG, "--no-train", *SMALL_DATA])
    assert code == 0
    saved = get_cfg()
    merge_from_file(saved, str(out / "config.yaml"))
    assert saved.SEED == 0
    assert saved.INPUT.SIZE == (32, 32)  # filled from the backbone
    assert saved.DATASET.ROOT == data_root
