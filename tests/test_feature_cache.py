"""Frozen-feature cache: same logits as the image path, keyed invalidation, exact cached training."""
from __future__ import annotations

import os

import torch

from conftest import COOP_CFG, SMALL_DATA, SYN_CFG, final_test, run_cli
from datasets import build_transform
from datasets.loader import DatasetWrapper
from trainers.components.context import StaticContext
from trainers.components.prompt_learner import PromptedCLIP, PromptLearner
from trainers.clip_prompting import feature_cache as fc


def _data(data_root):
    from configs.config import merge_from_list
    from trainers import get_cfg
    from datasets import build_dataset

    cfg = get_cfg()
    merge_from_list(cfg, ["DATASET.ROOT", data_root, *SMALL_DATA[:6]])
    return build_dataset(cfg)


def _tf(opts):
    from configs.config import merge_from_list
    from trainers import get_cfg

    cfg = get_cfg()
    merge_from_list(cfg, ["INPUT.SIZE", "(32, 32)", *opts])
    return build_transform(cfg, is_train=True)


def test_cached_views_give_the_logits_of_the_same_augmented_view(data_root, tiny_clip):
    ds = _data(data_root)
    data = ds.train_x[:6]
    tf = _tf(["INPUT.TRANSFORMS", "('random_resized_crop', 'random_flip', 'normalize')", "INPUT.RRCROP_SCALE", "(0.5, 1.0)"])
    assert fc.transform_is_random(tf)
    model = PromptedCLIP(tiny_clip, PromptLearner(tiny_clip, ds.classnames, StaticContext(n_ctx=4, ctx_dim=64, n_cls=8), 4)).eval()
    feats = fc.compute_features(model.image_features, data, tf, views=3, seed=5, batch_size=4,
                                device=torch.device("cpu"), num_classes=8)
    assert feats.shape == (6, 3, tiny_clip.embed_dim)
    wrapper = DatasetWrapper(data, tf, num_classes=8, seed=5)
    for epoch in range(3):  # the image loader's view of sample i in epoch k is cached view k
        imgs = torch.stack([wrapper[(i, epoch)]["img"] for i in range(6)])
        with torch.no_grad():
            assert torch.allclose(model(feats[:, epoch], features=True), model(imgs), atol=1e-5)
    assert not torch.allclose(feats[:, 0], feats[:, 1])  # the views differ


def test_cache_is_rebuilt_when_backbone_or_transform_changes(tmp_path, data_root):
    from clip import load_clip

    data = _data(data_root).test[:4]
    path = str(tmp_path / "c.pt")
    calls = []

    def key_and_build(clip, tf):
        key = {"encoder": fc.fingerprint_module(clip), "transform": repr(tf), "views": 1, "seed": 0,
               "data": fc.fingerprint_data(data)}

        def build():
            calls.append(1)
            return fc.compute_features(clip.encode_image, data, tf, 1, 0, 4, torch.device("cpu"), num_classes=8)

        return fc.load_or_build(path, key, build)

    torch.manual_seed(0)
    a = load_clip("emolab-tiny-vit")
    tf = _tf(["INPUT.TRANSFORMS", "('normalize',)"])
    f1 = key_and_build(a, tf)
    f2 = key_and_build(a, tf)
    assert len(calls) == 1 and torch.equal(f1, f2)  # reused
    torch.manual_seed(1)
    b = load_clip("emolab-tiny-vit")  # other weights, same architecture
    key_and_build(b, tf)
    assert len(calls) == 2
    key_and_build(b, _tf(["INPUT.TRANSFORMS", "('normalize',)", "INPUT.INTERPOLATION", "bicubic"]))
    assert len(calls) == 3
    os.utime(data[0].impath, ns=(1, 1))  # the data changed on disk
    key_and_build(b, _tf(["INPUT.TRANSFORMS", "('normalize',)", "INPUT.INTERPOLATION", "bicubic"]))
    assert len(calls) == 4


def test_cached_training_equals_uncached_without_random_augmentation(tmp_path, data_root):
    common = ["--root", data_root, "--seed", "3", "--config-file", COOP_CFG, "--dataset-config-file", SYN_CFG,
              *SMALL_DATA, "OPTIM.MAX_EPOCH", "2", "INPUT.TRANSFORMS", "('normalize',)"]
    assert run_cli(["--output-dir", str(tmp_path / "plain"), *common, "CACHE.FEATURES", "off"]) == 0
    assert run_cli(["--output-dir", str(tmp_path / "cached"), *common, "CACHE.FEATURES", "auto"]) == 0
    assert "feature cache: encoding 32 train images" in (tmp_path / "cached" / "log.txt").read_text()
    plain, cached = final_test(str(tmp_path / "plain")), final_test(str(tmp_path / "cached"))
    assert plain.keys() == cached.keys()
    for k in plain:
        assert abs(plain[k] - cached[k]) < 1e-6, k
