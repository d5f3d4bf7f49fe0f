"""Results do not depend on the DataLoader: every registered trainer gives bit-identical metrics records
with 0, 1 and 2 loader workers and different ``DATALOADER.PREFETCH_FACTOR`` values (keys the README
lists among those that cannot change results, and that a resume accepts with a new value).

Each augmentation draws from generators seeded per sample (torch, ``random`` and ``np.random``, so
timm's RandAugment and random erasing too) and UniEmoX's Mixup/CutMix from one seeded per step.
Tiny configs, one or two epochs, separate caches per run (the feature cache is built with the
workers of the run)."""
from __future__ import annotations

import json
import os

import pytest

from conftest import ROOT, SYN_CFG, run_cli
from conftest import project_trainers

DS = os.path.join(ROOT, "configs/datasets")
SMALL = ["DATASET.SYNTHETIC.N_TRAIN_PER_CLASS", "4", "DATASET.SYNTHETIC.N_VAL_PER_CLASS", "2",
         "DATASET.SYNTHETIC.N_TEST_PER_CLASS", "2"]

#: trainer -> (dataset yaml, root kind, extra opts); every trainer in TRAINER_REGISTRY must be here
#: (configs/trainers/<trainer>/tiny_synthetic.yaml, or the file named in CONFIGS)
CONFIGS = {"VEGA": "tiny_synthetic_no_anchor_branch.yaml"}  # no anchor file to build
PLANS = {
    "CoOp": (SYN_CFG, "syn", ["OPTIM.MAX_EPOCH", "1"]),
    "CoCoOp": (SYN_CFG, "syn", ["OPTIM.MAX_EPOCH", "1"]),
    "LinearProbeCLIP": (SYN_CFG, "syn", ["OPTIM.MAX_EPOCH", "1"]),
    "ZeroshotCLIP": (SYN_CFG, "syn", []),
    "EmoCoOp": (os.path.join(DS, "synthetic_emotion_ml.yaml"), "syn", ["OPTIM.MAX_EPOCH", "1"]),
    "EWMTCNN": (SYN_CFG, "syn", ["OPTIM.MAX_EPOCH", "1", "MODEL.BACKBONE.NAME", "resnet18", "INPUT.SIZE", "(16, 16)"]),
    "VARegression": (SYN_CFG, "syn", ["OPTIM.MAX_EPOCH", "1", "INPUT.SIZE", "(16, 16)"]),
    "VEGA": (os.path.join(DS, "synthetic_conversation.yaml"), "syn",
             ["DATASET.CONVERSATION.SYNTHETIC.N_TRAIN_DIALOGUES", "6", "DATASET.CONVERSATION.SYNTHETIC.N_TEST_DIALOGUES", "3",
              "DATASET.CONVERSATION.SYNTHETIC.MAX_LEN", "6", "TRAINER.VEGA.HIDDEN", "8", "TRAINER.VEGA.HEADS", "2",
              "OPTIM.MAX_EPOCH", "1"]),
    "UniEmoX": (SYN_CFG, "syn", ["OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "8"]),
    "UniEmoXPretrain": (os.path.join(DS, "emoset.yaml"), "emoset", ["OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "8"]),
}

#: (NUM_WORKERS, PREFETCH_FACTOR) of the runs compared
LOADERS = [("0", "2"), ("1", "4"), ("2", "2")]


def test_every_registered_trainer_is_covered():
    assert sorted(PLANS) == sorted(project_trainers())


@pytest.fixture(scope="module")
def emoset_root(tmp_path_factory):
    from datasets.synthetic.native import NativeSettings, write_native

    r = tmp_path_factory.mktemp("emoset")
    write_native(str(r / "EmoSet-118K"), "emoset", NativeSettings(2, 1, 1))
    return str(r)


def _records(out):
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in f]


@pytest.mark.parametrize("trainer", sorted(PLANS))
def test_metrics_do_not_depend_on_loader_workers(trainer, tmp_path, data_root, emoset_root):
    data, kind, extra = PLANS[trainer]
    cfg = os.path.join(ROOT, "configs/trainers", trainer, CONFIGS.get(trainer, "tiny_synthetic.yaml"))
    root = emoset_root if kind == "emoset" else data_root
    got = []
    for workers, prefetch in LOADERS:
        out = tmp_path / f"w{workers}_p{prefetch}"
        args = ["--root", root, "--seed", "3", "--trainer", trainer, "--config-file", cfg, "--dataset-config-file", data,
                "--output-dir", str(out), *SMALL, *extra, "CACHE.DIR", str(tmp_path / f"cache_w{workers}"),
                "DATALOADER.NUM_WORKERS", workers, "DATALOADER.PREFETCH_FACTOR", prefetch]
        if trainer == "EmoCoOp":
            args += ["TRAINER.EMOCOOP.CLUSTER_CACHE_DIR", str(tmp_path / f"clusters_w{workers}")]
        assert run_cli(args) == 0
        got.append(_records(str(out)))
    assert got[0], "no metrics records"
    for (workers, prefetch), recs in zip(LOADERS[1:], got[1:]):
        assert recs == got[0], f"{trainer}: NUM_WORKERS {workers} / PREFETCH_FACTOR {prefetch} changed the metrics"
